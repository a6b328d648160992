"""Who an update's weight comes from: the server, out of what each device declared at enrolment.

The aggregator reads every device record on the ``qflare.devices`` topic (for its
keys already); ``DeviceBook`` keeps, per device, the latest record's status and the
dataset size it declared (label ``qflare.num_examples``, approved by the operator
through the enrolment token). When a round opens, ``RoundWeighting.open`` fixes the
round's rule (``qflare.fl.weighting``: the policy, and the cap from the selected
devices' median declared size) together with the declared size of each selected
device then; it is stored with the round (migration 011), so a restart or a replay
weights every update exactly as the first run did. At intake, ``weigh`` turns the
device's claim into its weight, or refuses it (``over_claim``, ``undeclared``), and
``check_sender`` refuses a suspended device (``suspended``), whatever round it was
selected for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from qflare.errors import Rejected, SchemaError
from qflare.fl import JobSpec, Update
from qflare.fl.job import WeightingPolicy
from qflare.fl.weighting import RoundWeights, round_weights
from qflare.protocol.devices import Device, declared_examples
from qflare.reasons import Reason

log = structlog.get_logger("qflare.aggregator")


class DeviceBook:
    """The latest record's status and declared dataset size of each device (from the device topic).

    Fed only records the key cache admitted (a newer revision, or the same one re-sent).
    """

    def __init__(self) -> None:
        self._status: dict[str, str] = {}
        self._declared: dict[str, int] = {}

    def apply(self, device: Device) -> None:
        device_id = device.device_id
        if device.status == "deleted":
            self._status.pop(device_id, None)
            self._declared.pop(device_id, None)
            return
        self._status[device_id] = device.status
        try:
            size = declared_examples(device.labels)
        except SchemaError as exc:
            # The registry refuses such an enrolment; a record that still carries one declares nothing.
            log.warning("device declares a malformed dataset size", device_id=device_id, error=str(exc))
            size = None
        if size is None:
            self._declared.pop(device_id, None)
        else:
            self._declared[device_id] = size

    def status(self, device_id: str) -> str | None:
        return self._status.get(device_id)

    def declared(self, device_id: str) -> int | None:
        return self._declared.get(device_id)

    def declarations(self, devices: Iterable[str]) -> dict[str, int | None]:
        return {d: self._declared.get(d) for d in devices}


@dataclass(frozen=True, slots=True)
class RoundWeighting:
    """A round's weighting rule and the selected devices' declared sizes, fixed when it opened."""

    rule: RoundWeights
    declared: Mapping[str, int | None] = field(default_factory=dict)

    @classmethod
    def open(cls, job: JobSpec, selected: Iterable[str], book: DeviceBook) -> RoundWeighting:
        declared = book.declarations(selected)
        return cls(round_weights(job.weighting, job.weight_cap, declared, declared), declared)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.rule.policy, "cap": self.rule.cap, "declared": dict(self.declared)}

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> RoundWeighting:
        declared = {str(d): None if n is None else int(n) for d, n in dict(stored["declared"]).items()}
        cap = stored.get("cap")
        policy: WeightingPolicy = "equal" if stored["policy"] == "equal" else "declared"
        return cls(RoundWeights(policy, None if cap is None else int(cap)), declared)


def check_sender(book: DeviceBook, device_id: str) -> None:
    """``Rejected`` (``suspended``) when the device's latest record says it is suspended."""
    if book.status(device_id) == "suspended":
        raise Rejected(
            Reason.SUSPENDED,
            f"device {device_id} is suspended (quarantined) until an operator reinstates it",
            field="sender",
        )


def weigh(update: Update, weighting: RoundWeighting, book: DeviceBook) -> Update:
    """``update`` with its weight in place of the claim (what the strategy aggregates with), or
    ``Rejected`` (``over_claim``, ``undeclared``).

    The declared size is the one fixed when the round opened; a selected device that had
    declared nothing then may have been re-read since (its record arrived after the task).
    """
    declared = weighting.declared.get(update.device_id)
    if declared is None:
        declared = book.declared(update.device_id)
    weight = weighting.rule.weight(update.device_id, update.num_examples, declared)
    return update._replace(num_examples=weight)
