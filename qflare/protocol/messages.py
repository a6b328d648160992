"""The chunk body, and the registry of every body type by its envelope ``type``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from qflare.protocol.body import Body, Fields
from qflare.protocol.control import AuditEvent, AuditHead, JobCommand, RegistryCommand
from qflare.protocol.devices import (
    Deregistration,
    Device,
    DeviceHealth,
    Enrollment,
    EnrollmentResult,
    Heartbeat,
)
from qflare.protocol.store import StoredModel
from qflare.protocol.training import GlobalModel, ModelUpdate, RoundComplete, RoundFailure, RoundTask


@dataclass(frozen=True, slots=True)
class ModelChunk(Body):
    """One slice of a body too large for one record (see ``qflare.protocol.chunks``).

    ``size`` and ``digest`` describe the whole reassembled body; ``offset`` places
    this slice in it. The envelope's ``chunk`` field carries stream/index/count.
    """

    TYPE: ClassVar[str] = "model_chunk"
    KEYS: ClassVar[tuple[str, ...]] = ("inner_type", "size", "offset", "digest", "data")
    inner_type: str
    size: int
    offset: int
    digest: bytes
    data: bytes | memoryview

    def to_body(self) -> dict[str, Any]:
        return {
            "inner_type": self.inner_type,
            "size": self.size,
            "offset": self.offset,
            "digest": self.digest,
            "data": self.data,
        }

    @classmethod
    def from_body(cls, data: object) -> Self:
        f = Fields(data, cls.KEYS)
        out = cls(
            inner_type=f.choice("inner_type", CHUNKABLE),
            size=f.integer("size", lo=1),
            offset=f.integer("offset"),
            digest=f.blob("digest", size=32),
            data=f.view("data"),
        )
        return out


BODY_TYPES: dict[str, type[Body]] = {
    cls.TYPE: cls
    for cls in (
        Enrollment,
        EnrollmentResult,
        Heartbeat,
        Device,
        DeviceHealth,
        Deregistration,
        RoundTask,
        GlobalModel,
        ModelChunk,
        ModelUpdate,
        RoundFailure,
        RoundComplete,
        AuditEvent,
        AuditHead,
        JobCommand,
        RegistryCommand,
        StoredModel,
    )
}
#: Types whose bodies may be split into chunks (anything but a chunk itself).
CHUNKABLE = frozenset(BODY_TYPES) - {ModelChunk.TYPE}
