"""Offset gaps of the scheduler's consumer group, found before faust starts.

faust resets a committed position that left the log (retention, deleted
records, a recreated topic) to ``earliest`` on its own, and says nothing. So
before the worker joins the group, the committed positions are compared with
the logs' bounds, and each one outside them is audited as an ``offset.gap``
with the range that was never read; faust then goes on from the log's start.
"""

from __future__ import annotations

import structlog
from aiokafka import TopicPartition

from qflare.identity import Identity
from qflare.kafka import KafkaSettings, make_admin, make_consumer, make_producer
from qflare.poison import GAPS, Gap
from qflare.protocol import seal
from qflare.protocol.control import AuditEvent
from services.scheduler.gate import SERVICE

log = structlog.get_logger("qflare.scheduler")


async def find_gaps(kafka: KafkaSettings, group: str) -> list[Gap]:
    """The partitions whose committed position in ``group`` lies outside their log."""
    admin = make_admin(kafka)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    positions = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
    if not positions:
        return []  # a new group: it starts at the beginning and skips nothing
    probe = make_consumer(kafka, group_id=None)
    await probe.start()
    try:
        parts = list(positions)
        starts = await probe.beginning_offsets(parts)
        ends = await probe.end_offsets(parts)
    finally:
        await probe.stop()
    return [
        Gap(tp.topic, tp.partition, offset, starts[tp])
        for tp, offset in sorted(positions.items(), key=_order)
        if offset < starts[tp] or offset > ends[tp]
    ]


def _order(item: tuple[TopicPartition, int]) -> tuple[str, int]:
    return item[0].topic, item[0].partition


async def audit_gaps(kafka: KafkaSettings, group: str, identity: Identity) -> list[Gap]:
    """Find the group's gaps and publish one signed ``offset.gap`` audit event for each."""
    gaps = await find_gaps(kafka, group)
    if not gaps:
        return gaps
    audit = kafka.topics.audit
    producer = make_producer(kafka)
    await producer.start()
    try:
        for gap in gaps:
            log.error("offset gap: records were never read", **gap.detail())
            GAPS.labels(SERVICE, gap.topic).inc()
            event = AuditEvent(
                "offset.gap", "critical", identity.name, subject=gap.topic, detail=dict(gap.detail())
            )
            record = seal(event, identity.signer, audit.channel, sender=identity.name)
            await producer.send_and_wait(audit.name, record, key=identity.name.encode())
    finally:
        await producer.stop()
    return gaps
