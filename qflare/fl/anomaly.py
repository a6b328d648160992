"""Which updates look wrong, and which devices have looked wrong too often.

Scores come from the round's rule (``RobustStrategy.scores``): each update's
delta ``norm``, its ``cosine`` to the round's aggregate delta, and the rule's own
(``krum_score``, ``trust``, ``clip``...). Flagging is a fixed, documented rule
applied to those numbers, so the simulator and the aggregator flag alike:

- ``norm``: the delta is longer than ``norm_k ×`` the round's median delta norm
  (scaling and model-replacement attacks, noise);
- ``cosine``: the delta points away from the aggregate, cosine below ``min_cosine``
  (sign flips, inner-product manipulation, label flips that dominate a device);
- ``trust``: FLTrust gave the update no trust at all (its direction opposes the
  server's root-set update).

A device flagged in ``k`` of its last ``m`` scored rounds is due for quarantine.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

#: Device id -> score name -> value (as ``qflare.fl.strategies._robust.Scores``).
Scores = Mapping[str, Mapping[str, float]]
FLAG_REASONS = ("norm", "cosine", "trust")


def flag_updates(scores: Scores, *, norm_k: float, min_cosine: float) -> dict[str, tuple[str, ...]]:
    """Device id -> the rules its update broke (only flagged devices appear), in ``FLAG_REASONS`` order."""
    norms = [s["norm"] for s in scores.values() if "norm" in s]
    median = statistics.median(norms) if norms else 0.0
    out: dict[str, tuple[str, ...]] = {}
    for device, s in scores.items():
        why: list[str] = []
        if median > 0 and s.get("norm", 0.0) > norm_k * median:
            why.append("norm")
        if "cosine" in s and s["cosine"] < min_cosine:
            why.append("cosine")
        if s.get("trust") == 0.0:
            why.append("trust")
        if why:
            out[device] = tuple(why)
    return out


def quarantine_due(history: Sequence[bool], *, k: int, m: int) -> bool:
    """Whether a device whose flags over its scored rounds, oldest first, are ``history`` is flagged in
    at least ``k`` of its last ``m`` (``k = 0`` disables quarantine)."""
    if k <= 0:
        return False
    return sum(history[-m:]) >= k
