"""Everything the aggregator writes to Kafka: model versions, round results, audit events.

All of it goes through the PostgreSQL outbox, queued in the transaction of the
change it reports (a new version, a closed round, a batch that rejected an
update) and flushed after the commit. A crash between the two re-sends the same
signed bytes, which receivers de-duplicate by message id.
"""

from __future__ import annotations

import structlog
from aiokafka import AIOKafkaProducer

from qflare import metrics
from qflare.errors import QflareError
from qflare.identity import Identity
from qflare.poison import Gap, Summary, Tally, printable
from qflare.protocol import Message, seal, seal_chunked
from qflare.protocol.control import AuditEvent
from qflare.protocol.limits import Limits
from qflare.protocol.topics import Topics
from qflare.protocol.training import MAX_FAILURE_MESSAGE, ModelUpdate, RoundComplete, RoundFailure
from qflare.types import Scalar
from services.aggregator.models import EncodedModel
from services.aggregator.store import AggregatorStore

log = structlog.get_logger("qflare.aggregator")
SERVICE = "aggregator"


class Publisher:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        store: AggregatorStore,
        identity: Identity,
        topics: Topics,
        limits: Limits,
        tally: Tally | None = None,
    ) -> None:
        self.producer = producer
        #: Rate limit of rejection reports (the poison-record policy).
        self.tally = tally or Tally(SERVICE)
        self.store = store
        self.identity = identity
        self.topics = topics
        self.limits = limits
        metrics.preset_rejections(
            SERVICE,
            (
                t.name
                for t in (topics.updates, topics.devices, topics.jobs, topics.rounds, topics.model_store)
            ),
        )

    async def queue_model(self, model: EncodedModel) -> None:
        """The model as one record or a chunk stream; chunk ``i`` has key ``<job_id>:<i>``.

        One key per chunk position is what lets the compacted topic keep a whole
        version: each new version overwrites the previous one slice by slice.
        """
        body = model.body
        records = seal_chunked(
            body,
            self.identity.signer,
            self.topics.models.channel,
            sender=self.identity.name,
            round=body.round,
            limits=self.limits,
        )
        for index, record in enumerate(records):
            await self.store.outbox.queue(self.topics.models.name, f"{body.job_id}:{index}".encode(), record)

    async def queue_round_complete(self, done: RoundComplete) -> None:
        record = seal(
            done,
            self.identity.signer,
            self.topics.rounds_complete.channel,
            sender=self.identity.name,
            round=done.round,
        )
        await self.store.outbox.queue(self.topics.rounds_complete.name, done.job_id.encode(), record)

    async def queue_audit(
        self,
        event: str,
        severity: str,
        *,
        reason: str = "",
        subject: str | None = None,
        ref_id: bytes | None = None,
        detail: dict[str, Scalar] | None = None,
    ) -> None:
        body = AuditEvent(
            event=event,
            severity=severity,
            source=SERVICE,
            reason=reason[:1024],
            subject=None if subject is None else printable(subject),
            ref_id=ref_id,
            detail=detail or {},
        )
        record = seal(body, self.identity.signer, self.topics.audit.channel, sender=self.identity.name)
        await self.store.outbox.queue(self.topics.audit.name, SERVICE.encode(), record)

    async def queue_update_accepted(self, msg: Message) -> None:
        """Audit an update folded into its round: who, which job and round, message id and
        body digest (the stream's, when chunked). Never the tensors."""
        update = msg.body
        assert isinstance(update, ModelUpdate)
        detail: dict[str, Scalar] = {
            "job_id": update.job_id,
            "round": update.round,
            "base_version": update.base_version,
            "num_examples": update.num_examples,
            "digest": msg.header.body_digest.hex(),
        }
        await self.queue_audit(
            "update.accepted", "info", subject=update.device_id, ref_id=msg.header.id, detail=detail
        )

    async def queue_update_failed(self, msg: Message) -> None:
        """Audit a device's failed reply counted as its answer: the device's reason and message."""
        failure = msg.body
        assert isinstance(failure, RoundFailure)
        detail: dict[str, Scalar] = {
            "job_id": failure.job_id,
            "round": failure.round,
            "base_version": failure.base_version,
            "message": printable(failure.message, MAX_FAILURE_MESSAGE),
            "digest": msg.header.body_digest.hex(),
        }
        await self.queue_audit(
            "update.failed",
            "warning",
            reason=failure.reason,
            subject=failure.device_id,
            ref_id=msg.header.id,
            detail=detail,
        )

    async def queue_rejection(
        self,
        exc: QflareError,
        *,
        topic: str,
        partition: int,
        offset: int,
        subject: str | None,
        ref_id: bytes | None = None,
        context: dict[str, Scalar] | None = None,
        source: str | None = None,
    ) -> None:
        """Count, log and audit one refused record (``update.rejected`` on the updates topic).

        ``source`` is the verified sender (None when the record did not verify); past the
        tally's rate limit for (topic, source, reason) the rejection is only counted, and
        ``queue_summaries`` reports it with the others left out.
        """
        if not self.tally.note(topic, source, exc.reason):
            return
        metrics.REJECTED.labels(SERVICE, topic, exc.reason).inc()
        log.warning(
            "rejected", topic=topic, offset=offset, reason=exc.reason, error=str(exc), subject=subject
        )
        event = "update.rejected" if topic == self.topics.updates.name else "message.rejected"
        detail: dict[str, Scalar] = {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "field": exc.field,
            "error": str(exc)[:500],
            **exc.detail,
            **(context or {}),
        }
        await self.queue_audit(
            event, "warning", reason=exc.reason, subject=subject, ref_id=ref_id, detail=detail
        )

    async def queue_summary(self, summary: Summary) -> None:
        """The ``rejections.summary`` of a (topic, source, reason) whose window left reports out."""
        log.warning("rejections summarised", source=summary.source, **summary.detail())
        await self.queue_audit(
            "rejections.summary",
            "warning",
            reason=summary.reason,
            subject=summary.source,
            detail=dict(summary.detail()),
        )

    async def queue_gap(self, gap: Gap) -> None:
        """Audit offsets that left the log unread (retention, deleted records): never skipped silently."""
        log.error("offset gap: records were never read", **gap.detail())
        await self.queue_audit("offset.gap", "critical", subject=gap.topic, detail=dict(gap.detail()))

    async def flush_outbox(self) -> None:
        await self.store.outbox.flush(self.producer, service=SERVICE)
