"""Bodies about devices: enrolment, liveness, registry records, deregistration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from qflare.crypto.base import (
    KEY_ID_BYTES,
    ML_DSA_65,
    MLDSA65_PUBLIC_KEY_BYTES,
    MLKEM768_PUBLIC_KEY_BYTES,
    key_id,
)
from qflare.errors import SchemaError
from qflare.protocol.body import Body, Fields, sorted_map

DEVICE_STATUSES = frozenset({"active", "revoked", "deregistered"})
HEARTBEAT_STATES = frozenset({"idle", "training", "uploading"})
HEALTH_STATES = frozenset({"online", "stale", "offline"})


@dataclass(frozen=True, slots=True)
class Enrollment(Body):
    """A device asks to join, signing with the key it presents (proof of possession)."""

    TYPE: ClassVar[str] = "enrollment"
    KEYS: ClassVar[tuple[str, ...]] = (
        "device_id",
        "public_key",
        "sig_alg",
        "kem_public_key",
        "token",
        "labels",
    )
    device_id: str
    public_key: bytes
    sig_alg: str = ML_DSA_65
    kem_public_key: bytes | None = None
    #: Bootstrap secret the registry may require; never logged.
    token: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "public_key": self.public_key,
            "sig_alg": self.sig_alg,
            "kem_public_key": self.kem_public_key,
            "token": self.token,
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
            token=f.opt_text("token", max_len=512),
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
    """The registry's record of a device (compacted topic, key = device id)."""

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
    )
    device_id: str
    status: str
    public_key: bytes
    enrolled_ms: int
    updated_ms: int
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
