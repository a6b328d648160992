"""What each verified message (or refused record) becomes in the chain. Pure code.

Model weights, update tensors and token hashes never enter the chain: only who did what,
when, in which job and round, and digests or counts where the content matters.
"""

from __future__ import annotations

import hashlib
from typing import Any

from qflare.errors import ProtocolError
from qflare.poison import Gap, Summary, printable
from qflare.protocol import Message
from qflare.protocol.control import AuditEvent, JobCommand, RegistryCommand
from qflare.protocol.devices import Deregistration, Device, DeviceHealth, Enrollment, EnrollmentResult
from qflare.protocol.envelope import parse_envelope
from qflare.protocol.limits import Limits
from qflare.protocol.messages import ModelChunk
from qflare.protocol.training import GlobalModel, RoundComplete, RoundTask
from services.audit.chain import Event

REJECTED = "message.rejected"


def _outcome(event: str) -> str:
    if event.endswith("rejected") or event.endswith("refused"):
        return "rejected"
    if event.endswith("accepted") or event.endswith("enrolled"):
        return "accepted"
    return "info"


def _scalar(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes | bytearray | memoryview) else value


def from_message(msg: Message, topic: str, partition: int, offset: int, key: str | None) -> Event | None:
    """The entry for a verified message, or None for what is not audited (non-first model chunks)."""
    head, body = msg.header, msg.body
    base: dict[str, Any] = {
        "time_ms": head.ts_ms,
        "actor": head.sender,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "round": head.round,
        "ref_id": head.id,
    }
    detail: dict[str, Any] = {"message_type": head.type}
    if isinstance(body, AuditEvent):
        detail.update({k: _scalar(v) for k, v in body.detail.items()}, severity=body.severity)
        detail["source"] = body.source
        job = body.detail.get("job_id")
        rnd = body.detail.get("round")
        base["round"] = rnd if isinstance(rnd, int) and not isinstance(rnd, bool) else head.round
        # The entry is about the message the event names, when it names one.
        base["ref_id"] = body.ref_id if body.ref_id is not None else head.id
        detail["event_id"] = head.id.hex()
        return Event(
            type=body.event,
            outcome=_outcome(body.event),
            reason=body.reason,
            subject=body.subject,
            job=job if isinstance(job, str) else None,
            detail=detail,
            **base,
        )
    if isinstance(body, RoundTask):
        detail.update(
            model_version=body.model_version,
            strategy=body.strategy,
            devices=list(body.devices),
            deadline_ms=body.deadline_ms,
            min_updates=body.min_updates,
        )
        base["round"] = body.round
        return Event(type="round.opened", outcome="info", job=body.job_id, detail=detail, **base)
    if isinstance(body, RoundComplete):
        detail.update(
            model_version=body.model_version,
            num_updates=body.num_updates,
            num_examples=body.num_examples,
            included=list(body.included),
            model_digest=_scalar(body.model_digest),
        )
        base["round"] = body.round
        outcome = "accepted" if body.status == "completed" else "info"
        return Event(
            type="round.completed",
            outcome=outcome,
            reason=body.status,
            job=body.job_id,
            detail=detail,
            **base,
        )
    if isinstance(body, GlobalModel):
        detail.update(version=body.version, tensors=len(body.tensors), digest=head.body_digest.hex())
        return Event(type="model.published", outcome="info", job=body.job_id, detail=detail, **base)
    if isinstance(body, ModelChunk):
        if head.chunk is None or head.chunk.index != 0:
            return None  # one entry per model version: its first chunk describes the whole body
        detail.update(size=body.size, digest=body.digest.hex(), chunks=head.chunk.count)
        job = None if key is None else key.rpartition(":")[0] or None
        return Event(type="model.published", outcome="info", job=job, detail=detail, **base)
    if isinstance(body, Device):
        detail.update(key_id=body.key_id.hex(), labels=dict(body.labels), revision=body.revision)
        return Event(
            type="device.record",
            outcome="info",
            reason=body.status,
            subject=body.device_id,
            detail=detail,
            **base,
        )
    if isinstance(body, EnrollmentResult):
        detail.update(key_id=body.key_id.hex(), field=body.field, result_id=head.id.hex())
        # The entry is about the enrolment answered.
        base["ref_id"] = body.enrollment_id
        return Event(
            type="device.enrollment_result",
            outcome=body.status,
            reason=body.reason,
            subject=body.device_id,
            detail=detail,
            **base,
        )
    if isinstance(body, Enrollment | Deregistration | DeviceHealth):
        kind = {Enrollment: "device.enrollment", Deregistration: "device.deregistration"}.get(
            type(body), "device.health"
        )
        reason = body.state if isinstance(body, DeviceHealth) else ""
        if isinstance(body, Deregistration):
            reason = body.reason
        return Event(type=kind, outcome="info", reason=reason, subject=body.device_id, detail=detail, **base)
    if isinstance(body, JobCommand):
        detail["config"] = {k: _scalar(v) for k, v in body.config.items()}
        return Event(type=f"job.{body.command}", outcome="info", job=body.job_id, detail=detail, **base)
    if isinstance(body, RegistryCommand):
        detail.update(tokens=len(body.token_hashes), expires_ms=body.expires_ms)
        return Event(
            type=f"registry.{body.command}", outcome="info", subject=body.device_id, detail=detail, **base
        )
    detail["unhandled"] = True
    return Event(type=f"message.{head.type}", outcome="info", detail=detail, **base)


def rejection(
    exc: ProtocolError,
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    key: str | None,
    now_ms: int,
) -> Event:
    """The entry for a record that did not verify; the claimed sender is named, not believed."""
    claimed_sender, claimed_type, ref = "", None, None
    if value is not None:
        try:
            head = parse_envelope(value, Limits()).header
            claimed_sender, claimed_type, ref = head.sender, head.type, head.id
        except ProtocolError:
            pass  # not even an envelope: the digest below identifies the bytes
    detail: dict[str, Any] = {
        "error": str(exc)[:500],
        "field": exc.field,
        "claimed_sender": claimed_sender,
        "claimed_type": claimed_type,
        "record_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "record_bytes": 0 if value is None else len(value),
        **exc.detail,
    }
    return Event(
        time_ms=now_ms,
        actor=claimed_sender or "unknown",
        type=REJECTED,
        outcome="rejected",
        reason=exc.reason,
        subject=key,
        ref_id=ref,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        detail=detail,
    )


def gap(g: Gap, now_ms: int) -> Event:
    """The entry for offsets that left a log before audit read them: the chain says what it missed."""
    return Event(
        time_ms=now_ms,
        actor="audit",
        type="offset.gap",
        outcome="info",
        subject=g.topic,
        source_topic=g.topic,
        source_partition=g.partition,
        source_offset=g.first,
        detail=dict(g.detail()),
    )


def summary(s: Summary, now_ms: int) -> Event:
    """The entry for a window's refused records of one (topic, reason) that got no entry each."""
    return Event(
        time_ms=now_ms,
        actor="audit",
        type="rejections.summary",
        outcome="rejected",
        reason=s.reason,
        subject=s.source,
        source_topic=s.topic,
        source_partition=-1,
        source_offset=-1,
        detail=dict(s.detail()),
    )


def unstorable(event: Event, exc: ProtocolError, now_ms: int) -> Event:
    """What stands in the chain for an entry the database refused: where it came from, and why."""
    return Event(
        time_ms=now_ms,
        actor="audit",
        type="entry.unstorable",
        outcome="rejected",
        reason=exc.reason,
        subject=None,
        source_topic=printable(event.source_topic),
        source_partition=event.source_partition,
        source_offset=event.source_offset,
        detail={
            "error": str(exc)[:500],
            "event_digest": event.digest().hex(),
            "event_type": printable(event.type),
        },
    )
