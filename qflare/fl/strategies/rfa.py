"""Robust federated aggregation, RFA (Pillutla, Kakade and Harchaoui, 2022, "Robust Aggregation for
Federated Learning"): the geometric median of the deltas by the smoothed Weiszfeld algorithm.

Starting from the mean ``v = Σ α_k Δ_k``, with ``α_k`` the round's server-owned weights
as the paper's ``n_k / n`` (``weighted``, the default: the declared sizes the operator
approved, capped at k × the median, never a device's own claim; or ``1/n``), each
iteration sets

    β_k = α_k / max(ν, ‖v − Δ_k‖),    v ← Σ β_k Δ_k / Σ β_k.

``v`` stays a convex combination of the deltas, so the distances come from their
Gram matrix and only the final sum reads the deltas again. The geometric median's
breakdown point is 1/2: ``n ≥ 2f + 1``. Anomaly score ``weight``: ``β_k / Σ β`` in
the last iteration.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from qflare.fl.arrays import NDArrays
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.state import StrategyState
from qflare.fl.strategies._robust import F64, ByzantineParams, Deltas, RobustStrategy, Scores


class RFAParams(ByzantineParams):
    name: Literal["rfa"] = "rfa"
    iterations: int = Field(10, ge=1, le=1000, description="Smoothed Weiszfeld iterations T.")
    nu: float = Field(1e-6, gt=0, description="ν: the smoothing floor on distances.")
    weighted: bool = Field(
        True,
        description="α_k: the round's server-owned weights, as in the paper (false: equal weights 1/n).",
    )


def weiszfeld(gram: F64, alpha: F64, nu: float, iterations: int) -> F64:
    """Coefficients ``c`` (summing to 1) of the smoothed geometric median ``Σ c_k x_k`` of rows with
    Gram matrix ``gram`` and weights ``alpha``."""
    c = alpha / alpha.sum()
    diag = np.diag(gram)
    for _ in range(iterations):
        gc = gram @ c
        dist = np.sqrt(np.maximum(c @ gc - 2.0 * gc + diag, 0.0))
        beta = alpha / np.maximum(nu, dist)
        c = beta / beta.sum()
    return np.asarray(c, np.float64)


@register_strategy
class RFA(RobustStrategy):
    """Geometric median of the deltas by smoothed Weiszfeld (Pillutla et al., 2022)."""

    name = "rfa"
    Params: ClassVar[type[StrategyParams]] = RFAParams

    def _params(self) -> RFAParams:
        assert isinstance(self.job.strategy, RFAParams)
        return self.job.strategy

    def min_updates(self) -> int:
        return 2 * self._params().num_byzantine + 1

    def bound(self) -> str:
        return "n ≥ 2f + 1"

    def combine(self, state: StrategyState, deltas: Deltas) -> tuple[NDArrays, Scores, StrategyState]:
        p = self._params()
        alpha = deltas.examples if p.weighted else np.full(deltas.n, 1.0)
        c = weiszfeld(deltas.gram(), alpha / alpha.sum(), p.nu, p.iterations)
        own = {d: {"weight": float(c[i])} for i, d in enumerate(deltas.ids)}
        return deltas.combine(c), own, state
