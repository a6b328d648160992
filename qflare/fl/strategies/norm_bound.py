"""Norm bounding (Sun et al., 2019, "Can You Really Backdoor Federated Learning?").

Each delta is scaled down to at most ``max_norm`` in Euclidean norm,
``Δ_k · min(1, M / ‖Δ_k‖)``, and the model moves by the example-weighted mean of the
clipped deltas (FedAvg's weighting). A boosted update (model replacement) then has
no more pull than an honest one of norm M. No bound on the number of updates.
Anomaly score ``clip``: the factor applied (1 = untouched).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from qflare.fl.arrays import NDArrays
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.state import StrategyState
from qflare.fl.strategies._robust import F64, Deltas, RobustStrategy, Scores


class NormBoundParams(StrategyParams):
    name: Literal["norm_bound"] = "norm_bound"
    max_norm: float = Field(3.0, gt=0, description="M: the largest norm of a delta from the global model.")


def clip_factors(norms: F64, max_norm: float) -> F64:
    """``min(1, M / ‖Δ_k‖)`` (1 for a zero delta)."""
    return np.where(norms > max_norm, max_norm / np.where(norms > 0, norms, 1.0), 1.0)


def norm_bound_coefficients(norms: F64, examples: F64, max_norm: float) -> F64:
    """Coefficients of the example-weighted mean of the clipped deltas."""
    return np.asarray(examples / examples.sum() * clip_factors(norms, max_norm), np.float64)


@register_strategy
class NormBound(RobustStrategy):
    """Clip each delta's norm, then the example-weighted mean (Sun et al., 2019)."""

    name = "norm_bound"
    Params: ClassVar[type[StrategyParams]] = NormBoundParams

    def combine(self, state: StrategyState, deltas: Deltas) -> tuple[NDArrays, Scores, StrategyState]:
        assert isinstance(self.job.strategy, NormBoundParams)
        m = self.job.strategy.max_norm
        norms = deltas.norms()
        coeffs = norm_bound_coefficients(norms, deltas.examples, m)
        factors = clip_factors(norms, m)
        own = {d: {"clip": float(factors[i])} for i, d in enumerate(deltas.ids)}
        return deltas.combine(coeffs), own, state
