"""Bodies about devices: enrolment, liveness, registry records, deregistration."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from qflare.crypto.base import (
    KEY_ID_BYTES,
    ML_DSA_65,
    MLDSA65_PUBLIC_KEY_BYTES,
    MLDSA65_SIGNATURE_BYTES,
    MLKEM768_PUBLIC_KEY_BYTES,
    key_id,
)
from qflare.crypto.enrolment import TOKEN_ID_BYTES, TOKEN_MAC_BYTES
from qflare.errors import SchemaError
from qflare.protocol.body import Body, Fields, sorted_map

#: ``deleted`` is the signed deletion: consumers forget the device. A bare tombstone changes nothing.
#: ``suspended``: quarantined (flagged in too many recent rounds); the key still verifies (heartbeats),
#: but the device is not selected and its updates are refused until an operator reinstates it.
DEVICE_STATUSES = frozenset({"active", "suspended", "revoked", "deregistered", "deleted"})
#: Enrolment label holding the dataset size a device declares (a decimal integer ≥ 1).
DECLARED_EXAMPLES_LABEL = "qflare.num_examples"
#: Enrolment-token label holding the largest dataset size the operator approves for that token.
MAX_EXAMPLES_LABEL = "qflare.max_examples"
#: Labels only the registry or the operator may set; a device declaring them is refused.
RESERVED_LABELS = frozenset({MAX_EXAMPLES_LABEL})
_MAX_DECLARED = 2**40


def declared_examples(labels: dict[str, str], key: str = DECLARED_EXAMPLES_LABEL) -> int | None:
    """The dataset size a label map declares under ``key`` (None: none declared).

    ``SchemaError`` naming ``labels.<key>`` if it is not a decimal integer in [1, 2^40].
    """
    text = labels.get(key)
    if text is None:
        return None
    if not text.isdecimal() or len(text) > 13:
        raise SchemaError(f"{text!r} is not a whole number of examples", field=f"labels.{key}")
    value = int(text)
    if not 1 <= value <= _MAX_DECLARED:
        raise SchemaError(f"{value} is outside [1, 2^40]", field=f"labels.{key}")
    return value


HEARTBEAT_STATES = frozenset({"idle", "training", "uploading"})
HEALTH_STATES = frozenset({"online", "stale", "offline"})
ENROLLMENT_STATUSES = frozenset({"accepted", "rejected"})
#: A reason is an open vocabulary (new reasons are not a protocol change), so only its form is fixed.
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Enrollment(Body):
    """A device asks to join, signing with the key it presents (proof of possession).

    The enrolment token itself never travels: ``token_id`` names the token's MAC
    key and ``token_mac`` binds the deployment, the device id and the key id
    (``qflare.crypto.enrolment``). ``rotation_proof`` is the current key's
    signature over the new key id, for a rotation.
    """

    TYPE: ClassVar[str] = "enrollment"
    KEYS: ClassVar[tuple[str, ...]] = (
        "device_id",
        "public_key",
        "sig_alg",
        "kem_public_key",
        "token_id",
        "token_mac",
        "rotation_proof",
        "labels",
    )
    device_id: str
    public_key: bytes
    sig_alg: str = ML_DSA_65
    kem_public_key: bytes | None = None
    token_id: bytes | None = None
    token_mac: bytes | None = None
    rotation_proof: bytes | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "public_key": self.public_key,
            "sig_alg": self.sig_alg,
            "kem_public_key": self.kem_public_key,
            "token_id": self.token_id,
            "token_mac": self.token_mac,
            "rotation_proof": self.rotation_proof,
            "labels": sorted_map(self.labels),
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            device_id=f.id("device_id"),
            public_key=f.blob("public_key", size=MLDSA65_PUBLIC_KEY_BYTES),
            sig_alg=f.choice("sig_alg", {ML_DSA_65}),
            kem_public_key=f.opt_blob("kem_public_key", size=MLKEM768_PUBLIC_KEY_BYTES),
            token_id=f.opt_blob("token_id", size=TOKEN_ID_BYTES),
            token_mac=f.opt_blob("token_mac", size=TOKEN_MAC_BYTES),
            rotation_proof=f.opt_blob("rotation_proof", size=MLDSA65_SIGNATURE_BYTES),
            labels=f.str_map("labels"),
        )
        return out

    def claimed_key(self) -> tuple[str, bytes]:
        return self.device_id, self.public_key


@dataclass(frozen=True, slots=True)
class Heartbeat(Body):
    TYPE: ClassVar[str] = "heartbeat"
    KEYS: ClassVar[tuple[str, ...]] = ("device_id", "seq", "state", "metrics")
    device_id: str
    seq: int
    state: str = "idle"
    metrics: dict[str, float] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "seq": self.seq,
            "state": self.state,
            "metrics": sorted_map(self.metrics),
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            f.id("device_id"), f.integer("seq"), f.choice("state", HEARTBEAT_STATES), f.float_map("metrics")
        )
        return out


@dataclass(frozen=True, slots=True)
class Device(Body):
    """The registry's record of a device (compacted topic, key = device id).

    ``revision`` grows with every change of the device (the registry's
    PostgreSQL counter): consumers keep the highest and refuse lower or equal
    ones, so a re-published old record changes nothing.
    """

    TYPE: ClassVar[str] = "device"
    KEYS: ClassVar[tuple[str, ...]] = (
        "device_id",
        "status",
        "public_key",
        "key_id",
        "sig_alg",
        "kem_public_key",
        "labels",
        "enrolled_ms",
        "updated_ms",
        "revision",
    )
    device_id: str
    status: str
    public_key: bytes
    enrolled_ms: int
    updated_ms: int
    revision: int = 1
    sig_alg: str = ML_DSA_65
    kem_public_key: bytes | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key)

    def to_body(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "status": self.status,
            "public_key": self.public_key,
            "key_id": self.key_id,
            "sig_alg": self.sig_alg,
            "kem_public_key": self.kem_public_key,
            "labels": sorted_map(self.labels),
            "enrolled_ms": self.enrolled_ms,
            "updated_ms": self.updated_ms,
            "revision": self.revision,
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        device_id = f.id("device_id")
        status = f.choice("status", DEVICE_STATUSES)
        public_key = f.blob("public_key", size=MLDSA65_PUBLIC_KEY_BYTES)
        kid = f.blob("key_id", size=KEY_ID_BYTES)
        out = cls(
            device_id=device_id,
            status=status,
            public_key=public_key,
            sig_alg=f.choice("sig_alg", {ML_DSA_65}),
            kem_public_key=f.opt_blob("kem_public_key", size=MLKEM768_PUBLIC_KEY_BYTES),
            labels=f.str_map("labels"),
            enrolled_ms=f.integer("enrolled_ms"),
            updated_ms=f.integer("updated_ms"),
            revision=f.integer("revision", lo=1),
        )
        # Carried for consumers that index by key id; it must agree with the key (checked last).
        if kid != out.key_id:
            raise SchemaError("is not SHA-256(public_key)[:16]", field="body.key_id")
        return out


@dataclass(frozen=True, slots=True)
class DeviceHealth(Body):
    """Liveness transitions derived from heartbeats."""

    TYPE: ClassVar[str] = "device_health"
    KEYS: ClassVar[tuple[str, ...]] = ("device_id", "state", "last_seen_ms")
    device_id: str
    state: str
    last_seen_ms: int

    def to_body(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "state": self.state, "last_seen_ms": self.last_seen_ms}

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(f.id("device_id"), f.choice("state", HEALTH_STATES), f.integer("last_seen_ms"))
        return out


@dataclass(frozen=True, slots=True)
class Deregistration(Body):
    """A device leaves (signed by itself) or is removed (signed by an operator service)."""

    TYPE: ClassVar[str] = "deregistration"
    KEYS: ClassVar[tuple[str, ...]] = ("device_id", "reason")
    device_id: str
    reason: str = ""

    def to_body(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "reason": self.reason}

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(f.id("device_id"), f.text("reason", max_len=256))
        return out


@dataclass(frozen=True, slots=True)
class EnrollmentResult(Body):
    """The registry's signed answer to one enrolment, addressed to the device that sent it.

    ``enrollment_id`` is the id of the enrolment envelope answered: a device
    matches its result on it. ``reason`` is ``new``, ``unchanged`` or ``rotated``
    when accepted, else the rejection reason; ``field`` names what was refused.
    Every device may read this topic (Kafka ACLs are per topic, not per key),
    so a result carries nothing secret: no token, no labels.
    """

    TYPE: ClassVar[str] = "enrollment_result"
    KEYS: ClassVar[tuple[str, ...]] = (
        "device_id",
        "enrollment_id",
        "key_id",
        "status",
        "reason",
        "field",
        "message",
    )
    device_id: str
    enrollment_id: bytes
    key_id: bytes
    status: str
    reason: str
    field: str | None = None
    message: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def to_body(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "enrollment_id": self.enrollment_id,
            "key_id": self.key_id,
            "status": self.status,
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            device_id=f.id("device_id"),
            enrollment_id=f.blob("enrollment_id", size=16),
            key_id=f.blob("key_id", size=KEY_ID_BYTES),
            status=f.choice("status", ENROLLMENT_STATUSES),
            reason=f.text("reason", max_len=64, pattern=_REASON),
            field=f.opt_text("field", max_len=256),
            message=f.text("message", max_len=1024),
        )
        return out
