"""Bulyan (El Mhamdi, Guerraoui and Rouault, 2018, "The Hidden Vulnerability of Distributed Learning in
Byzantium").

Two stages over the round's deltas, with ``f`` the tolerated Byzantine updates:

1. select ``θ = n − 2f`` deltas by Krum repeatedly, each time removing the one chosen;
2. for each coordinate, average the ``β = θ − 2f`` selected values closest to the
   selected values' median, weighted by their updates' server-owned weights as FedAvg's
   mean is (``weighted``, the default; the paper's plain mean otherwise).

The paper requires ``n ≥ 4f + 3``. Anomaly scores: ``krum_score`` (over all n) and
``selected`` (1 if chosen in stage 1).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from qflare.fl.arrays import NDArrays
from qflare.fl.job import StrategyParams
from qflare.fl.registry import register_strategy
from qflare.fl.state import StrategyState
from qflare.fl.strategies._robust import F64, ByzantineParams, Deltas, RobustStrategy, Scores, distances
from qflare.fl.strategies.krum import krum_scores


class BulyanParams(ByzantineParams):
    name: Literal["bulyan"] = "bulyan"
    weighted: bool = Field(
        True,
        description="Stage 2 averages each coordinate's kept values with their updates' server-owned "
        "weights, as FedAvg (false: the paper's plain mean).",
    )


def bulyan_select(dist2: F64, f: int) -> list[int]:
    """Stage 1: ``n − 2f`` rows picked one at a time by Krum on the rows not yet picked (sorted)."""
    left = list(range(dist2.shape[0]))
    chosen: list[int] = []
    for _ in range(dist2.shape[0] - 2 * f):
        sub = dist2[np.ix_(left, left)]
        best = int(np.argmin(krum_scores(sub, f)))  # argmin takes the first of equal scores
        chosen.append(left.pop(best))
    return sorted(chosen)


def bulyan_coordinates(x: F64, f: int, weights: F64 | None = None) -> F64:
    """Stage 2: per column of the selected rows ``x``, the mean of the θ − 2f values nearest its median
    (weighted by their rows' ``weights`` when given)."""
    beta = x.shape[0] - 2 * f
    med = np.median(x, axis=0)
    nearest = np.argsort(np.abs(x - med), axis=0, kind="stable")[:beta]
    kept = np.take_along_axis(x, nearest, axis=0)
    if weights is None:
        return np.asarray(kept.mean(axis=0), np.float64)
    w = weights[nearest]
    return np.asarray((kept * w).sum(axis=0) / w.sum(axis=0), np.float64)


@register_strategy
class Bulyan(RobustStrategy):
    """Krum selection, then a coordinate-wise trimmed mean around the median (El Mhamdi et al., 2018)."""

    name = "bulyan"
    Params: ClassVar[type[StrategyParams]] = BulyanParams

    def _f(self) -> int:
        assert isinstance(self.job.strategy, BulyanParams)
        return self.job.strategy.num_byzantine

    def min_updates(self) -> int:
        return 4 * self._f() + 3

    def bound(self) -> str:
        return "n ≥ 4f + 3"

    def combine(self, state: StrategyState, deltas: Deltas) -> tuple[NDArrays, Scores, StrategyState]:
        f = self._f()
        dist2 = distances(deltas.gram())
        chosen = bulyan_select(dist2, f)
        assert isinstance(self.job.strategy, BulyanParams)
        weights = deltas.examples[chosen] if self.job.strategy.weighted else None
        step = deltas.coordinatewise(lambda x: bulyan_coordinates(x, f, weights), rows=chosen)
        scores = krum_scores(dist2, f)
        own = {
            d: {"krum_score": float(scores[i]), "selected": float(i in chosen)}
            for i, d in enumerate(deltas.ids)
        }
        return step, own, state
