"""Bodies of a training round: task, global model, update, completion."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from qflare.errors import SchemaError
from qflare.protocol.body import Body, Fields, sorted_map
from qflare.protocol.tensors import Tensor
from qflare.types import Scalar

#: ``held``: the round aggregated, but the publication gate refused the new version (its held-out
#: accuracy fell by more than the job's ``gate_max_drop``); ``model_version`` stays the round's own.
ROUND_STATUSES = frozenset({"completed", "quorum_not_met", "failed", "held"})
#: A failed reply's ``reason``: a short token (a rejection reason, or the name of the exception raised).
FAILURE_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")
#: The longest ``message`` of a failed reply, in characters.
MAX_FAILURE_MESSAGE = 1000
#: Who evaluated the model a round's ``test_*`` metrics describe.
EVALUATIONS = frozenset({"central", "federated"})


@dataclass(frozen=True, slots=True)
class RoundTask(Body):
    """The scheduler opens a round for the selected devices.

    ``fencing_token`` is the scheduler leader's token (strictly larger for each new
    leader), so a deposed leader's late tasks can be refused. ``config`` holds the
    devices' instructions (``qflare.fl.TrainConfig``).
    """

    TYPE: ClassVar[str] = "round_task"
    KEYS: ClassVar[tuple[str, ...]] = (
        "job_id",
        "round",
        "model_version",
        "strategy",
        "devices",
        "deadline_ms",
        "min_updates",
        "fencing_token",
        "config",
    )
    job_id: str
    round: int
    model_version: int
    strategy: str
    devices: tuple[str, ...]
    deadline_ms: int
    min_updates: int
    fencing_token: int
    config: dict[str, Scalar] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "round": self.round,
            "model_version": self.model_version,
            "strategy": self.strategy,
            "devices": list(self.devices),
            "deadline_ms": self.deadline_ms,
            "min_updates": self.min_updates,
            "fencing_token": self.fencing_token,
            "config": sorted_map(self.config),
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            job_id=f.id("job_id"),
            round=f.integer("round"),
            model_version=f.integer("model_version"),
            strategy=f.id("strategy"),
            devices=f.ids("devices"),
            deadline_ms=f.integer("deadline_ms"),
            min_updates=f.integer("min_updates", lo=1),
            fencing_token=f.integer("fencing_token"),
            config=f.scalar_map("config"),
        )
        return out


@dataclass(frozen=True, slots=True)
class GlobalModel(Body):
    """A version of a job's global model (compacted topic; usually chunked)."""

    TYPE: ClassVar[str] = "model"
    KEYS: ClassVar[tuple[str, ...]] = ("job_id", "version", "round", "tensors", "metadata")
    job_id: str
    version: int
    tensors: tuple[Tensor, ...]
    round: int | None = None
    metadata: dict[str, Scalar] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "version": self.version,
            "round": self.round,
            "tensors": [t.to_wire() for t in self.tensors],
            "metadata": sorted_map(self.metadata),
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            job_id=f.id("job_id"),
            version=f.integer("version"),
            round=f.opt_integer("round"),
            tensors=f.tensors("tensors"),
            metadata=f.scalar_map("metadata"),
        )
        return out

    def all_tensors(self) -> tuple[Tensor, ...]:
        return self.tensors


@dataclass(frozen=True, slots=True)
class ModelUpdate(Body):
    """A device's locally trained weights for one round."""

    TYPE: ClassVar[str] = "model_update"
    KEYS: ClassVar[tuple[str, ...]] = (
        "job_id",
        "round",
        "device_id",
        "base_version",
        "num_examples",
        "tensors",
        "metrics",
    )
    job_id: str
    round: int
    device_id: str
    base_version: int
    num_examples: int
    tensors: tuple[Tensor, ...]
    metrics: dict[str, float] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "round": self.round,
            "device_id": self.device_id,
            "base_version": self.base_version,
            "num_examples": self.num_examples,
            "tensors": [t.to_wire() for t in self.tensors],
            "metrics": sorted_map(self.metrics),
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            job_id=f.id("job_id"),
            round=f.integer("round"),
            device_id=f.id("device_id"),
            base_version=f.integer("base_version"),
            num_examples=f.integer("num_examples"),
            tensors=f.tensors("tensors"),
            metrics=f.float_map("metrics"),
        )
        return out

    def all_tensors(self) -> tuple[Tensor, ...]:
        return self.tensors


@dataclass(frozen=True, slots=True)
class RoundFailure(Body):
    """A device's failed reply to a round: it could not train (its app did not load, a handler
    raised, the result had the wrong layout). It answers the round like an update, without weights."""

    TYPE: ClassVar[str] = "round_failure"
    KEYS: ClassVar[tuple[str, ...]] = ("job_id", "round", "device_id", "base_version", "reason", "message")
    job_id: str
    round: int
    device_id: str
    base_version: int
    reason: str
    message: str

    def to_body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "round": self.round,
            "device_id": self.device_id,
            "base_version": self.base_version,
            "reason": self.reason,
            "message": self.message,
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            job_id=f.id("job_id"),
            round=f.integer("round"),
            device_id=f.id("device_id"),
            base_version=f.integer("base_version"),
            reason=f.text("reason", max_len=64, pattern=FAILURE_REASON),
            message=f.text("message", max_len=MAX_FAILURE_MESSAGE),
        )
        # Stored and shown as text downstream (PostgreSQL text refuses NUL outright).
        if "\0" in out.message:
            raise SchemaError("contains a NUL character", field="body.message")
        return out

    @classmethod
    def of(
        cls, job_id: str, round: int, device_id: str, base_version: int, reason: str, message: str
    ) -> Self:
        """A failed reply from whatever a device caught: the reason made a token, the message
        bounded and without NULs, so the report always fits the wire."""
        token = re.sub(r"[^A-Za-z0-9_.]", "_", reason)[:64]
        if not FAILURE_REASON.fullmatch(token):
            token = "error"
        text = message.replace("\0", "")
        if len(text) > MAX_FAILURE_MESSAGE:
            text = text[: MAX_FAILURE_MESSAGE - 3] + "..."
        return cls(job_id, round, device_id, base_version, token, text)


@dataclass(frozen=True, slots=True)
class RoundComplete(Body):
    """The aggregator closes a round and names the resulting model version."""

    TYPE: ClassVar[str] = "round_complete"
    KEYS: ClassVar[tuple[str, ...]] = (
        "job_id",
        "round",
        "status",
        "model_version",
        "num_updates",
        "num_examples",
        "included",
        "model_digest",
        "metrics",
        "evaluation",
        "scores",
    )
    job_id: str
    round: int
    status: str
    model_version: int
    num_updates: int
    num_examples: int
    included: tuple[str, ...] = ()
    #: SHA-256 of the new model's body, so anyone can check what they fetched.
    model_digest: bytes | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: "central" or "federated" when ``metrics`` holds an evaluation (``test_*``), else None.
    evaluation: str | None = None
    #: A buffered round's anomaly scores: included device id -> score name -> value (``norm``,
    #: ``cosine``, the rule's own, ``flagged`` 1 or 0). Empty when the round scored nothing.
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "round": self.round,
            "status": self.status,
            "model_version": self.model_version,
            "num_updates": self.num_updates,
            "num_examples": self.num_examples,
            "included": list(self.included),
            "model_digest": self.model_digest,
            "metrics": sorted_map(self.metrics),
            "evaluation": self.evaluation,
            "scores": {k: sorted_map(v) for k, v in sorted_map(self.scores).items()},
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            job_id=f.id("job_id"),
            round=f.integer("round"),
            status=f.choice("status", ROUND_STATUSES),
            model_version=f.integer("model_version"),
            num_updates=f.integer("num_updates"),
            num_examples=f.integer("num_examples"),
            included=f.ids("included"),
            model_digest=f.opt_blob("model_digest", size=32),
            metrics=f.float_map("metrics"),
            evaluation=f.opt_choice("evaluation", EVALUATIONS),
            scores=f.float_maps("scores"),
        )
        stray = sorted(set(out.scores) - set(out.included))
        if stray:  # a score describes an update the round folded in, nothing else
            raise SchemaError(f"{stray[0]!r} is not in included", field=f"body.scores.{stray[0]}")
        return out
