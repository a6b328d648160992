"""Poison records and offset gaps against the real audit service, Kafka and PostgreSQL.

Before the poison-record policy a record key holding NUL made PostgreSQL refuse
the batch (``DataError``, not transient) and the audit service crash-looped on
it; every unsigned garbage record became its own chain entry, without bound;
and a stored position that left the log was reset to the earliest offset
without a trace.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from qflare.kafka import KafkaSettings
from qflare.protocol.control import AuditEvent
from services.audit.chain import Entry
from tests.integration.services.audit_harness import AuditProcess, Publisher, wait_chain
from tests.integration.services.harness import delete_to_end


@dataclass
class QuickAudit(AuditProcess):
    """The audit service with a short rejection window, so its summaries come within a test."""

    def env(self) -> dict[str, str]:
        return {**super().env(), "QFLARE_AUDIT_REJECTION_WINDOW_S": "5"}


@pytest.fixture
def audit(kafka: KafkaSettings, keys_dir: Path, tmp_path: Path) -> Iterator[AuditProcess]:
    proc = QuickAudit(kafka, keys_dir, tmp_path / "audit.log")
    proc.start()
    yield proc
    proc.stop()


async def test_nul_keys_and_a_thousand_garbage_records_cost_a_bounded_chain(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings
) -> None:
    t = publisher.topics
    rng = random.Random(3)
    for i in range(1000):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
        await publisher.producer.send(t.audit.name, junk, key=b"dev\x00" + str(i % 7).encode())
    await publisher.producer.flush()
    genuine = AuditEvent("device.revoked", "info", "registry", subject="dev-y")
    await publisher.send(t.audit.name, "registry", publisher.seal("registry", genuine))

    def settled(entries: list[Entry]) -> bool:
        got = [e.event for e in entries]
        counted = sum(e.detail.get("count", 0) for e in got if e.type == "rejections.summary")
        return any(e.type == "device.revoked" for e in got) and counted > 0

    got = [e.event for e in await wait_chain(kafka.topic_prefix, settled, timeout_s=90)]
    rejected = [e for e in got if e.type == "message.rejected"]
    summaries = [e for e in got if e.type == "rejections.summary"]
    reasons = {e.reason for e in rejected}
    # At most five entries per reason and window, plus one summary each: far fewer than 1000.
    assert len(rejected) <= 5 * len(reasons) * 2
    assert len(got) < 60
    assert all(e.subject is None or "\x00" not in e.subject for e in got)
    assert all(e.detail["suppressed"] == e.detail["count"] - e.detail["reported"] for e in summaries)
    assert sum(e.detail["suppressed"] for e in summaries) + len(rejected) >= 900
    assert audit.alive and audit.starts == 1


async def test_an_offset_gap_is_audited_with_the_skipped_range(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings
) -> None:
    t = publisher.topics
    first = AuditEvent("device.revoked", "info", "registry", subject="before-gap")
    await publisher.send(t.audit.name, "registry", publisher.seal("registry", first))
    await wait_chain(kafka.topic_prefix, lambda es: any(e.event.subject == "before-gap" for e in es))
    audit.stop()

    # While audit is down, records arrive and are deleted before it reads them.
    for i in range(3):
        lost = AuditEvent("device.revoked", "info", "registry", subject=f"lost-{i}")
        await publisher.send(t.audit.name, "registry", publisher.seal("registry", lost))
    ends = await delete_to_end(kafka, t.audit)
    after = AuditEvent("device.revoked", "info", "registry", subject="after-gap")
    await publisher.send(t.audit.name, "registry", publisher.seal("registry", after))

    audit.start()
    got = [
        e.event
        for e in await wait_chain(
            kafka.topic_prefix, lambda es: any(e.event.subject == "after-gap" for e in es)
        )
    ]
    (gap,) = [e for e in got if e.type == "offset.gap"]
    assert gap.detail["topic"] == t.audit.name and gap.detail["skipped"] == 3
    tp = TopicPartition(t.audit.name, gap.detail["partition"])
    assert gap.detail["resumed_offset"] == ends[tp]
    assert not any(e.subject and e.subject.startswith("lost-") for e in got)


async def test_an_entry_the_database_refuses_is_replaced_and_its_batch_kept(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings
) -> None:
    # A signed event whose detail names a round past PostgreSQL's bigint: the insert fails for
    # good (NumericValueOutOfRange). Before, the batch's transaction failed and audit exited on
    # it at every restart; now that one entry is replaced by an entry saying so.
    t = publisher.topics
    before = AuditEvent("device.revoked", "info", "registry", subject="kept-before")
    huge = AuditEvent("round.note", "info", "registry", subject="huge", detail={"round": 2**64 - 1})
    after = AuditEvent("device.revoked", "info", "registry", subject="kept-after")
    records = [publisher.seal("registry", body) for body in (before, huge, after)]
    await publisher.send(t.audit.name, "registry", *records)

    got = [
        e.event
        for e in await wait_chain(
            kafka.topic_prefix, lambda es: any(e.event.subject == "kept-after" for e in es)
        )
    ]
    assert [e.subject for e in got if e.type == "device.revoked"] == ["kept-before", "kept-after"]
    (stand_in,) = [e for e in got if e.type == "entry.unstorable"]
    assert stand_in.reason == "store_refused" and stand_in.source_topic == t.audit.name
    assert "NumericValueOutOfRange" in stand_in.detail["error"]
    assert audit.alive and audit.starts == 1
