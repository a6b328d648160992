"""Coordinate-wise median (Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates").

Each coordinate of the new model moves by the median of that coordinate over the
round's deltas (the mean of the two middle values when n is even), unweighted. A
median is unmoved by any f < n/2 outliers, so the rule needs ``n ≥ 2f + 1``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from qflare.fl.arrays import NDArrays
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.state import StrategyState
from qflare.fl.strategies._robust import F64, ByzantineParams, Deltas, RobustStrategy, Scores


class MedianParams(ByzantineParams):
    name: Literal["median"] = "median"


def coordinate_median(x: F64) -> F64:
    """The median of each column of ``x`` (rows are updates)."""
    return np.median(x, axis=0)


@register_strategy
class Median(RobustStrategy):
    """Coordinate-wise median of the deltas (Yin et al., 2018)."""

    name = "median"
    Params: ClassVar[type[StrategyParams]] = MedianParams

    def min_updates(self) -> int:
        assert isinstance(self.job.strategy, MedianParams)
        return 2 * self.job.strategy.num_byzantine + 1

    def bound(self) -> str:
        return "n ≥ 2f + 1"

    def combine(self, state: StrategyState, deltas: Deltas) -> tuple[NDArrays, Scores, StrategyState]:
        return deltas.coordinatewise(coordinate_median), {}, state
