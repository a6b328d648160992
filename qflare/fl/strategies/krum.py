"""Krum and Multi-Krum (Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent").

Each delta's score is the sum of its squared distances to its ``n − f − 2`` nearest
other deltas; Krum moves the model by the delta with the lowest score, Multi-Krum by
the mean of the ``m`` lowest-scoring ones (``m = 0``: ``n − f``), weighted by the
round's server-owned weights as FedAvg's mean is (``weighted``, the default, which is
what Flower's Multi-Krum does with its clients' counts; the paper's plain mean
otherwise). Under unbalanced data the plain mean optimises a different objective
from FedAvg's and loses accuracy with no attack at all. Ties go
to the first in device-id order. The paper's guarantee needs ``n ≥ 2f + 3``; Multi-Krum
also needs ``m ≤ n − f``. The anomaly scores are ``krum_score`` and ``selected`` (1/0).
Distances come from the Gram matrix of the deltas, built a block at a time.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from qflare.errors import AggregationError, ConfigError
from qflare.fl.arrays import NDArrays
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.state import StrategyState
from qflare.fl.strategies._robust import (
    F64,
    ByzantineParams,
    Deltas,
    RobustStrategy,
    Scores,
    distances,
    guaranteed_updates,
)


class KrumParams(ByzantineParams):
    name: Literal["krum"] = "krum"


class MultiKrumParams(ByzantineParams):
    name: Literal["multikrum"] = "multikrum"
    m: int = Field(0, ge=0, description="Updates averaged: the m lowest Krum scores (0: n − f).")
    weighted: bool = Field(
        True,
        description="Average the m chosen deltas with the round's server-owned weights, as FedAvg "
        "(false: the paper's plain mean).",
    )


def krum_scores(dist2: F64, f: int) -> F64:
    """Each row's sum of squared distances to its ``n − f − 2`` nearest others (at least 1)."""
    n = dist2.shape[0]
    if n == 1:
        return np.zeros(1)
    k = min(n - 1, max(1, n - f - 2))
    scores = np.empty(n)
    for i in range(n):
        others = np.delete(dist2[i], i)
        scores[i] = np.sort(others)[:k].sum()
    return scores


def krum_select(dist2: F64, f: int, m: int) -> list[int]:
    """The ``m`` rows with the lowest Krum scores, lowest first (stable: ties by row order)."""
    order = np.argsort(krum_scores(dist2, f), kind="stable")
    return sorted(int(i) for i in order[:m])


class _KrumBase(RobustStrategy):
    def _f(self) -> int:
        params = self.job.strategy
        assert isinstance(params, ByzantineParams)
        return params.num_byzantine

    def min_updates(self) -> int:
        return 2 * self._f() + 3

    def bound(self) -> str:
        return "n ≥ 2f + 3"

    def _m(self, n: int) -> int:
        return 1

    def _weighted(self) -> bool:
        return False

    def combine(self, state: StrategyState, deltas: Deltas) -> tuple[NDArrays, Scores, StrategyState]:
        dist2 = distances(deltas.gram())
        scores = krum_scores(dist2, self._f())
        chosen = krum_select(dist2, self._f(), self._m(deltas.n))
        coeffs = np.zeros(deltas.n)
        if self._weighted():
            coeffs[chosen] = deltas.examples[chosen] / deltas.examples[chosen].sum()
        else:
            coeffs[chosen] = 1.0 / len(chosen)
        own = {
            d: {"krum_score": float(scores[i]), "selected": float(i in chosen)}
            for i, d in enumerate(deltas.ids)
        }
        return deltas.combine(coeffs), own, state


@register_strategy
class Krum(_KrumBase):
    """The delta closest to its n − f − 2 neighbours (Blanchard et al., 2017)."""

    name = "krum"
    Params: ClassVar[type[StrategyParams]] = KrumParams


@register_strategy
class MultiKrum(_KrumBase):
    """The mean of the m deltas with the lowest Krum scores (Blanchard et al., 2017)."""

    name = "multikrum"
    Params: ClassVar[type[StrategyParams]] = MultiKrumParams

    def check_job(self) -> None:
        super().check_job()
        assert isinstance(self.job.strategy, MultiKrumParams)
        m, f = self.job.strategy.m, self.job.strategy.num_byzantine
        have = guaranteed_updates(self.job)
        if m > have - f:
            raise ConfigError(
                f"multikrum averages m = {m} updates but needs m ≤ n − f = {have - f} for the fewest "
                f"updates a round of this job may close with ({have})",
                field="strategy.m",
            )

    def _weighted(self) -> bool:
        assert isinstance(self.job.strategy, MultiKrumParams)
        return self.job.strategy.weighted

    def _m(self, n: int) -> int:
        assert isinstance(self.job.strategy, MultiKrumParams)
        m = self.job.strategy.m or n - self._f()
        if m > n - self._f():
            raise AggregationError(f"m = {m} > n − f = {n - self._f()}", field="strategy.m")
        return m
