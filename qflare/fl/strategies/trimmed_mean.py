"""Coordinate-wise trimmed mean (Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates").

For each coordinate, the ``k = floor(β n)`` largest and ``k`` smallest values of the
round's deltas are dropped and the rest averaged, unweighted. It tolerates up to
``k`` faulty updates per round, so β must exceed the share of attackers; β < 1/2
leaves at least one value. The anomaly score ``trimmed`` is the share of an
update's coordinates that were dropped.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from qflare.fl.arrays import NDArrays
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.state import StrategyState
from qflare.fl.strategies._robust import F64, Deltas, RobustStrategy, Scores


class TrimmedMeanParams(StrategyParams):
    name: Literal["trimmed_mean"] = "trimmed_mean"
    beta: float = Field(
        0.1, ge=0, lt=0.5, description="β: the share trimmed from each end of every coordinate."
    )


def trim_count(n: int, beta: float) -> int:
    return math.floor(beta * n)


def trimmed_mean(x: F64, k: int) -> F64:
    """The mean of each column of ``x`` without its ``k`` largest and ``k`` smallest values."""
    kept = np.sort(x, axis=0)[k : x.shape[0] - k]
    return np.asarray(kept.mean(axis=0), np.float64)


def trimmed_mask(x: F64, k: int) -> F64:
    """1 where a value of ``x`` is among its column's ``k`` largest or smallest (stable ranks), else 0."""
    ranks = np.argsort(np.argsort(x, axis=0, kind="stable"), axis=0, kind="stable")
    return np.asarray((ranks < k) | (ranks >= x.shape[0] - k), np.float64)


@register_strategy
class TrimmedMean(RobustStrategy):
    """Coordinate-wise β-trimmed mean of the deltas (Yin et al., 2018)."""

    name = "trimmed_mean"
    Params: ClassVar[type[StrategyParams]] = TrimmedMeanParams

    def _k(self, n: int) -> int:
        assert isinstance(self.job.strategy, TrimmedMeanParams)
        return trim_count(n, self.job.strategy.beta)

    def bound(self) -> str:
        return "n − 2⌊βn⌋ ≥ 1"

    def combine(self, state: StrategyState, deltas: Deltas) -> tuple[NDArrays, Scores, StrategyState]:
        k = self._k(deltas.n)
        step = deltas.coordinatewise(lambda x: trimmed_mean(x, k))
        dropped = np.zeros(deltas.n)
        for t, a, b in deltas.blocks():
            dropped += trimmed_mask(deltas.block(t, a, b), k).sum(axis=1)
        total = float(sum(deltas.sizes)) or 1.0
        own = {d: {"trimmed": float(dropped[i]) / total} for i, d in enumerate(deltas.ids)}
        return step, own, state
