"""Centred clipping (Karimireddy, He and Jaggi, 2021, "Learning from History for Byzantine Robust
Optimization").

Starting from the previous round's aggregate ``v`` (zero before the first round),
each of ``L`` iterations moves ``v`` by the mean of the deltas' differences from it,
each clipped to radius τ:

    v ← v + (1/n) Σ (Δ_k − v) · min(1, τ / ‖Δ_k − v‖)

and the model moves by the final ``v``, which is kept in the state (``prev.t<i>``,
float64) as the next round's start. τ is in the units of a delta's norm and should be
tuned to the task; one iteration is the paper's practical choice. ``v`` stays a
combination of the deltas and the previous aggregate, so the distances come from
their Gram matrix. With a majority of honest updates assumed, ``n ≥ 2f + 1``.
Anomaly score ``clip``: the factor ``min(1, τ/‖Δ_k − v‖)`` of the last iteration.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from qflare.fl.arrays import NDArrays
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.state import StrategyState
from qflare.fl.strategies._arrays import load, store
from qflare.fl.strategies._robust import F64, ByzantineParams, Deltas, RobustStrategy, Scores

PREFIX = "prev"


class CenteredClipParams(ByzantineParams):
    name: Literal["centered_clip"] = "centered_clip"
    tau: float = Field(10.0, gt=0, description="τ: the clipping radius around the current estimate.")
    iterations: int = Field(1, ge=1, le=1000, description="L: clipping iterations per round.")


def centered_clip(gram: F64, tau: float, iterations: int) -> tuple[F64, F64]:
    """For rows ``x_1 … x_n, v_0`` with Gram matrix ``gram`` (the start ``v_0`` last): the coefficients
    ``e`` (over all n + 1 rows) of the clipped estimate, and the last iteration's clip factors."""
    size = gram.shape[0]
    n = size - 1
    e = np.zeros(size)
    e[n] = 1.0
    factors = np.ones(n)
    for _ in range(iterations):
        diff = np.eye(size)[:n] - e  # row k: coefficients of x_k − v
        dist = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, gram, diff), 0.0))
        with np.errstate(divide="ignore"):
            factors = np.where(dist > tau, tau / np.where(dist > 0, dist, 1.0), 1.0)
        e = e + (factors @ diff) / n
    return e, factors


@register_strategy
class CenteredClip(RobustStrategy):
    """Iterative clipping around the previous aggregate (Karimireddy, He and Jaggi, 2021)."""

    name = "centered_clip"
    Params: ClassVar[type[StrategyParams]] = CenteredClipParams

    def _params(self) -> CenteredClipParams:
        assert isinstance(self.job.strategy, CenteredClipParams)
        return self.job.strategy

    def min_updates(self) -> int:
        return 2 * self._params().num_byzantine + 1

    def bound(self) -> str:
        return "n ≥ 2f + 1"

    def combine(self, state: StrategyState, deltas: Deltas) -> tuple[NDArrays, Scores, StrategyState]:
        p = self._params()
        names = [f"t{i}" for i in range(len(deltas.sizes))]
        prev = [a.reshape(-1) for a in load(state.arrays, PREFIX, names, deltas.shapes)]
        e, factors = centered_clip(deltas.gram(extra=prev), p.tau, p.iterations)
        step = deltas.combine(e[:-1], extra=prev, extra_coeff=float(e[-1]))
        own = {d: {"clip": float(factors[i])} for i, d in enumerate(deltas.ids)}
        shaped_step = [s.reshape(shape) for s, shape in zip(step, deltas.shapes, strict=True)]
        arrays = {**state.arrays, **store(PREFIX, names, shaped_step)}
        return step, own, replace(state, arrays=arrays)
