"""Bodies for operations: audit events, audit chain heads, job and registry commands."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from qflare.crypto.base import KEY_ID_BYTES
from qflare.errors import SchemaError
from qflare.protocol.body import Body, Fields, Setting, sorted_map, sorted_settings
from qflare.types import Scalar

SEVERITIES = frozenset({"info", "warning", "error", "critical"})
JOB_COMMANDS = frozenset({"start", "pause", "resume", "stop"})
REGISTRY_COMMANDS = frozenset({"issue_tokens", "revoke", "rotate_key", "delete", "suspend", "reinstate"})
#: Commands that act on one device and so must name it.
_DEVICE_COMMANDS = frozenset({"revoke", "rotate_key", "delete", "suspend", "reinstate"})
_EVENT = re.compile(r"[a-z][a-z0-9_.]{0,63}")


@dataclass(frozen=True, slots=True)
class AuditEvent(Body):
    """Something security- or operations-relevant happened (e.g. a message was rejected)."""

    TYPE: ClassVar[str] = "audit_event"
    KEYS: ClassVar[tuple[str, ...]] = (
        "event",
        "severity",
        "source",
        "reason",
        "subject",
        "ref_id",
        "detail",
    )
    event: str
    severity: str
    source: str
    reason: str = ""
    subject: str | None = None
    #: Id of the message the event is about, when there is one.
    ref_id: bytes | None = None
    detail: dict[str, Scalar] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "severity": self.severity,
            "source": self.source,
            "reason": self.reason,
            "subject": self.subject,
            "ref_id": self.ref_id,
            "detail": sorted_map(self.detail),
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            event=f.text("event", pattern=_EVENT),
            severity=f.choice("severity", SEVERITIES),
            source=f.id("source"),
            reason=f.text("reason", max_len=1024),
            subject=f.opt_text("subject", max_len=256),
            ref_id=f.opt_blob("ref_id", size=16),
            detail=f.scalar_map("detail"),
        )
        return out


@dataclass(frozen=True, slots=True)
class JobCommand(Body):
    """Start, pause, resume or stop a training job.

    ``config`` is the job (``qflare.fl.JobSpec.to_wire()``) for ``start``, empty
    otherwise; the strategy's parameters are its one nested map.
    """

    TYPE: ClassVar[str] = "job_command"
    KEYS: ClassVar[tuple[str, ...]] = ("job_id", "command", "config")
    job_id: str
    command: str
    config: dict[str, Setting] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "command": self.command, "config": sorted_settings(self.config)}

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(f.id("job_id"), f.choice("command", JOB_COMMANDS), f.settings_map("config"))
        return out


@dataclass(frozen=True, slots=True)
class RegistryCommand(Body):
    """An operator instruction to the registry, signed with an operator key.

    ``issue_tokens`` carries SHA-256 hashes of new enrolment tokens (never the
    tokens; each hash is the key of the token's enrolment MAC), ``revoke``
    retires ``device_id``, ``delete`` removes it (a signed ``deleted`` record: the
    only way a device leaves the device topic), ``rotate_key`` lets ``device_id`` enrol a new key
    until ``expires_ms``: the one named by ``key_id``, or, when ``key_id`` is nil,
    one whose enrolment carries a rotation proof by the device's current key.
    """

    TYPE: ClassVar[str] = "registry_command"
    KEYS: ClassVar[tuple[str, ...]] = (
        "command",
        "device_id",
        "token_hashes",
        "expires_ms",
        "labels",
        "key_id",
    )
    command: str
    device_id: str | None
    token_hashes: tuple[bytes, ...] = ()
    expires_ms: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    key_id: bytes | None = None

    def to_body(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "device_id": self.device_id,
            "token_hashes": list(self.token_hashes),
            "expires_ms": self.expires_ms,
            "labels": sorted_map(self.labels),
            "key_id": self.key_id,
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        command = f.choice("command", REGISTRY_COMMANDS)
        out = cls(
            command,
            f.opt_id("device_id"),
            f.digests("token_hashes"),
            f.integer("expires_ms"),
            f.str_map("labels"),
            f.opt_blob("key_id", size=KEY_ID_BYTES),
        )
        if out.key_id is not None and command != "rotate_key":
            raise SchemaError(f"{command!r} takes no key_id", field="body.key_id")
        if (command in _DEVICE_COMMANDS) != (out.device_id is not None):
            need = "needs" if command in _DEVICE_COMMANDS else "takes no"
            raise SchemaError(f"{command!r} {need} device_id", field="body.device_id")
        return out


@dataclass(frozen=True, slots=True)
class AuditHead(Body):
    """The audit chain's latest entry, signed by the audit service.

    Published to a compacted topic and appended to a file kept apart from the
    database: a verifier that holds a head knows how long the chain was and what
    its last hash was, so a deleted tail or an emptied table shows up.
    """

    TYPE: ClassVar[str] = "audit_head"
    KEYS: ClassVar[tuple[str, ...]] = ("stream", "seq", "hash", "time_ms")
    #: The chain: the deployment's topic prefix ("" for none).
    stream: str
    #: Sequence number of the last entry (0: an empty chain).
    seq: int
    #: That entry's hash (the chain's genesis hash when ``seq`` is 0).
    hash: bytes
    #: When the chain reached this head (Unix ms).
    time_ms: int

    def to_body(self) -> dict[str, Any]:
        return {"stream": self.stream, "seq": self.seq, "hash": self.hash, "time_ms": self.time_ms}

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        return cls(
            f.text("stream", max_len=128), f.integer("seq"), f.blob("hash", size=32), f.integer("time_ms")
        )
