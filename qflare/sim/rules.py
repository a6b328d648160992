"""The aggregator's server-side rules, applied by ``qflare sim`` with the same pure code.

- weighting (``qflare.fl.weighting``): an update weighs what its device declared, capped at
  ``weight_cap ×`` the median declared size of the round's selected devices (or 1 under
  ``equal``); a claim above the declaration is refused and counted as a rejected update;
- anomaly flags (``qflare.fl.anomaly.flag_updates``) on a robust rule's ``scores``, and the
  quarantine that stops selecting a device flagged in ``quarantine_k`` of its last
  ``quarantine_m`` scored rounds;
- the publication gate: a candidate model whose test accuracy falls more than
  ``gate_max_drop`` below the published model's is held, not promoted;
- central evaluation that skips FLTrust's root set (``qflare.ml.rootset.evaluation_indices``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.fl.anomaly import flag_updates, quarantine_due
from qflare.fl.job import JobSpec
from qflare.fl.state import StrategyState
from qflare.fl.strategies._robust import RobustStrategy
from qflare.fl.strategy import Strategy, Update
from qflare.ml.rootset import evaluation_indices


def evaluation_split(
    job: JobSpec, images: NDArray[np.uint8], labels: NDArray[np.int64]
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """The test examples central evaluation uses: all of them, less FLTrust's root set for FLTrust."""
    if job.strategy.name != "fltrust":
        return images, labels
    size = int(getattr(job.strategy, "root_size"))  # noqa: B009 - FLTrustParams, not imported here
    keep = evaluation_indices(len(labels), size)
    return images[keep], labels[keep]


@dataclass(frozen=True, slots=True)
class Flags:
    """A round's flagged updates: how many, and how many of them came from known attackers."""

    flagged: int
    attackers: int
    devices: tuple[str, ...]


@dataclass
class Watch:
    """Flags each round's scored updates and remembers each device's history for quarantine."""

    job: JobSpec
    attackers: frozenset[str] = frozenset()
    history: dict[str, list[bool]] = field(default_factory=dict)
    suspended: set[str] = field(default_factory=set)

    def scored(
        self, strategy: Strategy, state: StrategyState, updates: Sequence[Update], weights: Sequence[Any]
    ) -> Flags | None:
        """Flag the round's updates (None when the rule gives no scores: a non-robust strategy)."""
        if not isinstance(strategy, RobustStrategy):
            return None
        scores = strategy.scores(state, updates, weights)
        flags = flag_updates(scores, norm_k=self.job.flag_norm_k, min_cosine=self.job.flag_cosine)
        for device in scores:
            seen = self.history.setdefault(device, [])
            seen.append(device in flags)
            if quarantine_due(seen, k=self.job.quarantine_k, m=self.job.quarantine_m):
                self.suspended.add(device)
        ids = tuple(sorted(flags))
        return Flags(len(ids), sum(d in self.attackers for d in ids), ids)


def declared_sizes(ids: Sequence[str], sizes: Sequence[int]) -> Mapping[str, int | None]:
    """Device id -> the training-shard size it declares at enrolment (an attacker declares its honest one)."""
    return dict(zip(ids, sizes, strict=True))
