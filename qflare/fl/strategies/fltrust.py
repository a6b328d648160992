"""FLTrust (Cao, Fang, Liu and Gong, 2021, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping").

The server trains the global model on its own small root set (``root_size`` test-split
images held out from evaluation, ``qflare.ml.rootset``), as a device would, giving the
server delta ``g_0``. Each device delta gets the trust score
``TS_k = ReLU(cos(Δ_k, g_0))``, is rescaled to ``g_0``'s norm, and the model moves by

    Σ TS_k · (‖g_0‖ / ‖Δ_k‖) Δ_k / Σ TS_k

(no move when every score is 0). Any number of attackers is tolerated while the root
set is honest, so the only bound is ``n ≥ 1``. Anomaly score ``trust``: ``TS_k``.
The server training imports torch inside ``server_delta`` only: ``qflare.fl`` stays
torch-free at import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from qflare.errors import ConfigError
from qflare.fl.accumulate import FixedPoint
from qflare.fl.arrays import NDArrays
from qflare.fl.job import JobSpec, StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.state import StrategyState
from qflare.fl.strategies._robust import F64, Deltas, RobustStrategy, Scores

#: The global weights -> the server's delta on its root set (per tensor, any shape), and the round.
RootTrainer = Callable[[Sequence[NDArray[Any]], int], Sequence[NDArray[Any]]]


class FLTrustParams(StrategyParams):
    name: Literal["fltrust"] = "fltrust"
    root_size: int = Field(100, ge=1, le=10_000, description="Test-split images in the server's root set.")
    root_epochs: int | None = Field(
        None,
        ge=1,
        le=1_000,
        description="Passes over the root set per round (default: the job's epochs). Each device delta is "
        "rescaled to the server delta's norm, so a server that takes far fewer steps than a device slows "
        "every round; the paper trains the server as long as a device: e.g. 6 x the job's epochs for "
        "devices of 600 examples and a root set of 100.",
    )


def trust_coefficients(dots: F64, norms: F64, server_norm: float) -> tuple[F64, F64]:
    """The coefficients of FLTrust's aggregate ``Σ c_k Δ_k`` and the trust scores, from each delta's
    inner product with and norm relative to the server delta of norm ``server_norm``."""
    safe = np.where(norms > 0, norms, 1.0)
    cos = np.where(norms > 0, dots / (safe * server_norm), 0.0) if server_norm > 0 else np.zeros_like(dots)
    trust = np.maximum(cos, 0.0)
    total = trust.sum()
    if total <= 0:
        return np.zeros_like(trust), trust
    return trust * (server_norm / safe) / total, trust


@register_strategy
class FLTrust(RobustStrategy):
    """Trust-weighted, norm-matched deltas against the server's root-set update (Cao et al., 2021)."""

    name = "fltrust"
    Params: ClassVar[type[StrategyParams]] = FLTrustParams

    def __init__(
        self,
        job: JobSpec | None = None,
        *,
        fixed_point: FixedPoint | None = None,
        root_trainer: RootTrainer | None = None,
    ) -> None:
        self.root_trainer = root_trainer
        super().__init__(job, fixed_point=fixed_point)

    def check_job(self) -> None:
        if self.root_trainer is None and self.job.builtin is None:
            raise ConfigError(
                "fltrust trains on the server, which has only the built-in models' code", field="model"
            )

    def server_delta(self, global_weights: Sequence[NDArray[Any]], round: int) -> list[F64]:
        """The server's update on the root set, flat per tensor (float64)."""
        if self.root_trainer is not None:
            delta = self.root_trainer(global_weights, round)
        else:
            from qflare.ml.rootset import root_update  # torch: imported only when FLTrust trains

            job = self.job
            assert isinstance(job.strategy, FLTrustParams) and job.builtin is not None
            from qflare.ml.arch import check_model_name

            delta = root_update(
                check_model_name(job.builtin),
                job.dataset,
                global_weights,
                epochs=job.strategy.root_epochs or job.epochs,
                batch_size=job.batch_size,
                lr=job.lr,
                seed=job.seed * 1_000_003 + round,
                size=job.strategy.root_size,
            )
        return [np.asarray(d, np.float64).reshape(-1) for d in delta]

    def combine(self, state: StrategyState, deltas: Deltas) -> tuple[NDArrays, Scores, StrategyState]:
        g0 = self.server_delta(
            [g.reshape(s) for g, s in zip(deltas.global_flat, deltas.shapes, strict=True)], state.round + 1
        )
        server_norm = math.sqrt(sum(float(np.dot(g, g)) for g in g0))
        coeffs, trust = trust_coefficients(deltas.dots(g0), deltas.norms(), server_norm)
        own = {d: {"trust": float(trust[i])} for i, d in enumerate(deltas.ids)}
        return deltas.combine(coeffs), own, state
