"""Who decides an update's weight: the server, from what the operator approved.

A device's own ``num_examples`` claim is only believed up to the dataset size it
declared at enrolment (a label the operator approved through its enrolment token,
``qflare.protocol.devices.declared_examples``), and no weight may exceed
``weight_cap × the median declared size of the round's selected devices``. The
median is fixed when the round opens, from the round task's device list, so the
cap is known before the first update arrives: streaming rounds can weight as they
go, and a replay after a crash gives the same weights.

Under ``equal`` every update weighs 1 (the claim is still checked against the
declaration when there is one, so a liar is refused under either policy).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qflare.errors import Rejected
from qflare.fl.job import WeightingPolicy
from qflare.reasons import Reason

_FIELD = "body.num_examples"


@dataclass(frozen=True, slots=True)
class RoundWeights:
    """A round's weighting rule: the policy, and the cap fixed at the round's start (None: no cap)."""

    policy: WeightingPolicy
    cap: int | None

    def weight(self, device_id: str, claimed: int, declared: int | None) -> int:
        """The weight of ``device_id``'s update claiming ``claimed`` examples.

        ``Rejected`` (``over_claim``) if it claims more than it declared, or (``undeclared``) if it
        declared nothing under the ``declared`` policy."""
        if declared is not None and claimed > declared:
            raise Rejected(
                Reason.OVER_CLAIM,
                f"{device_id} claims {claimed} examples but declared {declared} at enrolment",
                field=_FIELD,
            )
        if self.policy == "equal":
            return 1
        if declared is None:
            raise Rejected(
                Reason.UNDECLARED,
                f"{device_id} declared no dataset size at enrolment (label qflare.num_examples), "
                "and the job weights by declared size",
                field=_FIELD,
            )
        return claimed if self.cap is None else min(claimed, self.cap)


def round_weights(
    policy: WeightingPolicy, weight_cap: float, selected: Iterable[str], declared: Mapping[str, int | None]
) -> RoundWeights:
    """The rule for a round whose task selected ``selected``; ``declared`` maps device -> declared size.

    The cap is ``floor(weight_cap × median)`` over the selected devices that declared a size (at
    least 1); with none declared there is no cap (every update of such a round is refused anyway
    under ``declared``).
    """
    if policy == "equal":
        return RoundWeights(policy, None)
    sizes = [size for d in selected if (size := declared.get(d)) is not None]
    if not sizes:
        return RoundWeights(policy, None)
    cap = max(1, math.floor(weight_cap * statistics.median(sizes)))
    return RoundWeights(policy, cap)
