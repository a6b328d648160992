"""Everything the registry writes to Kafka: device records, audit events, health events.

State-change reports go through the PostgreSQL outbox (queued in the caller's
transaction, flushed once per batch); rejections are sent directly and
acknowledged before the batch's offsets are committed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord

from qflare import metrics, poison
from qflare.errors import QflareError
from qflare.identity import Identity
from qflare.poison import Gap, Summary, Tally
from qflare.protocol import Message, seal
from qflare.protocol.control import AuditEvent
from qflare.protocol.devices import Device, DeviceHealth
from qflare.protocol.topics import Topics, TopicSpec
from qflare.types import Scalar
from services.registry.store import DeviceRow, RegistryStore

log = structlog.get_logger("qflare.registry")
SERVICE = "registry"


class Publisher:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        store: RegistryStore,
        identity: Identity,
        topics: Topics,
        tally: Tally | None = None,
    ) -> None:
        self.producer = producer
        #: Rate limit of rejection reports (the poison-record policy).
        self.tally = tally or Tally(SERVICE)
        self.store = store
        self.identity = identity
        self.topics = topics
        self._in_flight: list[asyncio.Future[Any]] = []
        metrics.preset_rejections(
            SERVICE,
            (
                t.name
                for t in (topics.enrollments, topics.heartbeats, topics.registry_control, topics.devices)
            ),
        )

    def seal(self, body: AuditEvent | Device | DeviceHealth, spec: TopicSpec) -> bytes:
        return seal(body, self.identity.signer, spec.channel, sender=self.identity.name)

    async def queue_device(self, row: DeviceRow) -> None:
        record = Device(
            device_id=row.device_id,
            status=row.status,
            public_key=row.public_key,
            enrolled_ms=row.enrolled_ms,
            updated_ms=row.updated_ms,
            revision=row.revision,
            labels=row.labels,
        )
        await self.store.outbox.queue(
            self.topics.devices.name, row.device_id.encode(), self.seal(record, self.topics.devices)
        )

    async def queue_audit(
        self,
        event: str,
        severity: str,
        *,
        reason: str = "",
        subject: str | None = None,
        ref: Message | None = None,
        detail: dict[str, Scalar] | None = None,
    ) -> None:
        body = AuditEvent(
            event=event,
            severity=severity,
            source=SERVICE,
            reason=reason,
            subject=subject,
            ref_id=ref.header.id if ref else None,
            detail=dict(detail or {}),
        )
        await self.store.outbox.queue(
            self.topics.audit.name, SERVICE.encode(), self.seal(body, self.topics.audit)
        )

    async def flush_outbox(self) -> None:
        # Untraced, as heartbeats are: one trace per device record would swamp the traces of rounds.
        await self.store.outbox.flush(self.producer, service=SERVICE, trace=False)

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send without waiting; ``settle`` awaits every acknowledgement before offsets move."""
        self._in_flight.append(await self.producer.send(topic, value, key=key))
        metrics.BYTES_OUT.labels(SERVICE).inc(len(value))

    async def settle(self) -> None:
        in_flight, self._in_flight = self._in_flight, []
        await asyncio.gather(*in_flight)

    async def health(self, event: DeviceHealth) -> None:
        # Awaited here (not via settle): the sweep task must not wait on the loop's sends.
        await self.producer.send_and_wait(
            self.topics.health.name, self.seal(event, self.topics.health), key=event.device_id.encode()
        )

    async def reject(
        self,
        record: ConsumerRecord[Any, Any],
        exc: QflareError,
        *,
        source: str | None = None,
        ref: Message | None = None,
    ) -> None:
        """Count, log and audit a rejected record. Nothing changed, so no outbox is needed:
        a replay after a crash rejects (and reports) it again.

        ``source`` is the verified sender (None when the record did not verify); past the
        tally's rate limit for (topic, source, reason) the rejection is only counted, and the
        window's ``summary`` reports it with the others left out. ``ref``: the verified
        message, when it was a command, so its sender (``qflare devices …``) learns why.
        """
        if not self.tally.note(record.topic, source, exc.reason):
            return
        metrics.REJECTED.labels(SERVICE, record.topic, exc.reason).inc()
        subject = poison.record_key(record)
        log.warning(
            "rejected",
            topic=record.topic,
            offset=record.offset,
            reason=exc.reason,
            error=str(exc),
            subject=subject,
        )
        body = AuditEvent(
            event="message.rejected",
            severity="warning",
            source=SERVICE,
            reason=exc.reason,
            subject=subject,
            ref_id=None if ref is None else ref.header.id,
            detail={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "field": exc.field,
                "error": str(exc)[:500],
                **exc.detail,
            },
        )
        await self.send(self.topics.audit.name, SERVICE.encode(), self.seal(body, self.topics.audit))

    async def gap(self, gap: Gap) -> None:
        """Audit offsets that left the log unread (retention, deleted records): never skipped silently."""
        log.error("offset gap: records were never read", **gap.detail())
        body = AuditEvent(
            event="offset.gap",
            severity="critical",
            source=SERVICE,
            subject=gap.topic,
            detail=dict(gap.detail()),
        )
        await self.send(self.topics.audit.name, SERVICE.encode(), self.seal(body, self.topics.audit))

    async def summary(self, summary: Summary) -> None:
        """The ``rejections.summary`` of a (topic, source, reason) whose window left reports out."""
        log.warning("rejections summarised", source=summary.source, **summary.detail())
        body = AuditEvent(
            event="rejections.summary",
            severity="warning",
            source=SERVICE,
            reason=summary.reason,
            subject=summary.source,
            detail=dict(summary.detail()),
        )
        await self.send(self.topics.audit.name, SERVICE.encode(), self.seal(body, self.topics.audit))
