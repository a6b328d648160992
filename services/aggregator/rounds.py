"""A round in progress, when it closes, and what its completion reports.

Everything here is pure: the service loads ``OpenRound`` from PostgreSQL,
mutates it while handling a batch, and writes it back in the batch's
transaction; ``decide`` and ``round_metrics`` only read it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from qflare.errors import Rejected
from qflare.fl import RoundSums, Update
from qflare.fl.buffer import UpdateBuffer
from qflare.fl.evaluation import DeviceEvaluation, combine, is_evaluation_round, personal_summary
from qflare.fl.strategy import KNOWN_FAULTY_REASONS
from qflare.protocol.training import RoundTask
from qflare.reasons import Reason
from services.aggregator.weights import DeviceBook, RoundWeighting, check_sender, weigh

COMPLETED = "completed"
QUORUM_NOT_MET = "quorum_not_met"


@dataclass(frozen=True, slots=True)
class Included:
    """One device's accepted update: enough to report and de-duplicate it, never its weights."""

    device_id: str
    message_id: bytes
    #: The update's weight (``services.aggregator.weights``): what the strategy aggregated it with.
    num_examples: int
    loss: float | None
    #: The device's evaluation of the round's model version (federated evaluation), if any.
    evaluation: DeviceEvaluation | None = None
    #: A failed reply's reason (``round_failure``): the device answered, with no update.
    failure: str | None = None
    #: The device's accuracy of its own personal model (Ditto, FedPer), if it reported one.
    personal_accuracy: float | None = None
    #: The example count the device claimed (None: the same as ``num_examples``).
    claimed: int | None = None


@dataclass(slots=True)
class OpenRound:
    job_id: str
    round: int
    task_id: bytes
    model_version: int
    strategy: str
    devices: tuple[str, ...]
    deadline_ms: int
    min_updates: int
    opened_ms: int
    #: The exact running sums of this round's accepted updates (a buffered strategy has none).
    sums: RoundSums
    included: dict[str, Included] = field(default_factory=dict)
    #: Devices that answered with a failed reply: they count as answers, never as updates.
    failed: dict[str, Included] = field(default_factory=dict)
    #: ``bytes_in`` and ``rejected_<reason>`` counts, checkpointed with the sum.
    stats: Counter[str] = field(default_factory=Counter)
    #: Updates accepted since the last checkpoint (written as ``included`` rows).
    pending: list[Included] = field(default_factory=list)
    dirty: bool = False
    #: An evaluation-only round: replies carry evaluations, no weights, and make no new version.
    evaluate_only: bool = False
    #: A buffered strategy's accepted updates (None for a streaming one, or before the first).
    buffer: UpdateBuffer | None = None
    #: Buffered updates accepted since the last checkpoint (stored with their ``included`` rows).
    pending_updates: list[Update] = field(default_factory=list)
    #: The weighting rule fixed when the round opened (None: an evaluation-only round, or one
    #: opened before weights were fixed with the round; ``weighting_for`` then fixes it).
    weighting: RoundWeighting | None = None

    @classmethod
    def from_task(cls, task: RoundTask, task_id: bytes, opened_ms: int, sums: RoundSums) -> OpenRound:
        return cls(
            job_id=task.job_id,
            round=task.round,
            task_id=task_id,
            model_version=task.model_version,
            strategy=task.strategy,
            devices=tuple(task.devices),
            deadline_ms=task.deadline_ms,
            min_updates=task.min_updates,
            opened_ms=opened_ms,
            sums=sums,
            evaluate_only=is_evaluation_round(task.config),
        )

    @property
    def key(self) -> tuple[str, int]:
        return self.job_id, self.round

    @property
    def num_examples(self) -> int:
        """The sum of the included updates' weights."""
        return sum(i.num_examples for i in self.included.values())

    @property
    def claimed_examples(self) -> int:
        """The sum of the example counts the included devices claimed."""
        return sum(i.num_examples if i.claimed is None else i.claimed for i in self.included.values())

    def federated_evaluation(self) -> dict[str, float]:
        """The included devices' evaluations of the round's model version, combined (empty if none)."""
        found = {d: i.evaluation for d, i in self.included.items() if i.evaluation is not None}
        return combine(found, self.model_version)

    def include(self, entry: Included) -> None:
        if entry.failure is None:
            self.included[entry.device_id] = entry
        else:
            self.failed[entry.device_id] = entry
        self.pending.append(entry)
        self.dirty = True

    def answer(self, device_id: str) -> Included | None:
        """The device's answer to this round so far (an update or a failed reply), if any."""
        return self.included.get(device_id) or self.failed.get(device_id)

    def count(self, stat: str, amount: int = 1) -> None:
        self.stats[stat] += amount
        self.dirty = True

    def decide(self, now_ms: int | None) -> str | None:
        return decide(
            self.devices, self.included, self.min_updates, self.deadline_ms, now_ms, failed=self.failed
        )


def decide(
    selected: Collection[str],
    included: Collection[str],
    min_updates: int,
    deadline_ms: int,
    now_ms: int | None,
    *,
    failed: Collection[str] = (),
) -> str | None:
    """The round's outcome if it should close now, else None.

    It completes as soon as every selected device is in (nothing more can
    come); otherwise it waits for the deadline, then completes with at least
    ``min_updates`` updates or fails for want of a quorum. A failed reply is
    an answer but not an update: once every selected device answered, the
    round is decided at once, as the deadline would decide it. ``now_ms=None``
    means "no clock": only the first rule applies.
    """
    answered = set(included) | set(failed)
    if included and not failed and set(selected) <= answered:
        return COMPLETED
    everyone = bool(failed) and set(selected) <= answered
    if not everyone and (now_ms is None or now_ms < deadline_ms):
        return None
    return COMPLETED if included and len(included) >= min_updates else QUORUM_NOT_MET


def train_loss(included: Collection[Included]) -> float | None:
    """Example-weighted mean of the devices' reported losses (devices that reported none are left out).

    Summed in device-id order, so a replay after a crash reports the same float.
    """
    weighted = [
        (i.loss, i.num_examples) for i in sorted(included, key=lambda i: i.device_id) if i.loss is not None
    ]
    total = sum(n for _, n in weighted)
    if not total:
        return None
    return sum(loss * n for loss, n in weighted) / total


def round_metrics(
    rnd: OpenRound, closed_ms: int, evaluation: Mapping[str, float] | None = None
) -> dict[str, float]:
    """``RoundComplete.metrics``: participation, rejections by reason, traffic, time, losses."""
    out: dict[str, float] = {
        "participants": float(len(rnd.included)),
        "selected": float(len(rnd.devices)),
        "failed_devices": float(len(rnd.failed)),
        "bytes_in": float(rnd.stats.get("bytes_in", 0)),
        "claimed_examples": float(rnd.claimed_examples),
        "duration_s": max(0.0, (closed_ms - rnd.opened_ms) / 1000),
    }
    for stat, count in sorted(rnd.stats.items()):
        if stat.startswith("rejected_"):
            out[stat] = float(count)
    loss = train_loss(list(rnd.included.values()))
    personal = {d: i.personal_accuracy for d, i in rnd.included.items() if i.personal_accuracy is not None}
    out.update(personal_summary(personal))
    if loss is not None:
        out["train_loss"] = loss
    out.update(evaluation or {})
    # The wire refuses NaN and infinities in metrics (a diverged model can have an infinite test loss).
    return {k: v for k, v in out.items() if math.isfinite(v)}


def check_round_sender(book: DeviceBook, rnd: OpenRound, device_id: str, message_id: bytes) -> None:
    """``check_sender`` for a device selected for ``rnd``. A device suspended after the round
    opened can never answer it, so its refusal is counted as its answer (a failed reply,
    reason ``suspended``): the round closes once everyone else is in instead of waiting out
    its deadline for an update that cannot come. The refusal is still raised (and audited)."""
    try:
        check_sender(book, device_id)
    except Rejected:
        if rnd.answer(device_id) is None:
            rnd.include(Included(device_id, message_id, 0, None, failure=Reason.SUSPENDED.value))
        raise


def weigh_answer(
    rnd: OpenRound, update: Update, weighting: RoundWeighting, book: DeviceBook, message_id: bytes
) -> Update:
    """``weigh`` for an update of ``rnd``. A claim over the device's approved size (``over_claim``)
    is signed proof that the device misbehaved, and it would be refused the same way again, so the
    refusal is its answer (a failed reply): the round stops waiting for it, and the robust rule
    counts it against its f (``known_faulty``). The refusal is still raised (and audited)."""
    try:
        return weigh(update, weighting, book)
    except Rejected as exc:
        if exc.reason == Reason.OVER_CLAIM.value and rnd.answer(update.device_id) is None:
            rnd.include(Included(update.device_id, message_id, 0, None, failure=exc.reason))
        raise


def known_faulty(rnd: OpenRound) -> int:
    """Selected devices whose answer was a refusal proving them faulty (``KNOWN_FAULTY_REASONS``).

    A device's own failed reply giving one of those reasons counts as well: the edge never sends
    one, and a device that does declares itself suspended or over its approved size, so it is
    faulty by its own word, and it sent no update the rule could be misled by."""
    return sum(i.failure in KNOWN_FAULTY_REASONS for i in rnd.failed.values())
