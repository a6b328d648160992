"""The audit service under faults: kill -9 mid-stream, and Elasticsearch unreachable."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from qflare.crypto import read_key, signature_backend
from qflare.kafka import KafkaSettings
from qflare.protocol.control import AuditEvent
from services.audit.chain import CHECKPOINT, Entry, genesis, verify
from tests.integration.services.audit_harness import (
    AuditProcess,
    Publisher,
    chain,
    search,
    wait_chain,
)


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        "update.rejected",
        "warning",
        "aggregator",
        reason="replay",
        subject=f"dev-{i}",
        detail={"job_id": "job-k", "round": i},
    )


def _events_only(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.event.type != CHECKPOINT]


async def test_kill9_mid_stream_keeps_each_event_exactly_once(
    publisher: Publisher, kafka: KafkaSettings, keys_dir: Path, tmp_path: Path
) -> None:
    audit = AuditProcess(kafka, keys_dir, tmp_path / "audit.log", checkpoint_every=7)
    audit.start()
    total = 300
    try:
        sender = asyncio.create_task(
            publisher.send(
                publisher.topics.audit.name,
                "aggregator",
                *(publisher.seal("aggregator", _event(i)) for i in range(total)),
            )
        )
        await wait_chain(kafka.topic_prefix, lambda es: len(es) >= 40)
        audit.kill9()  # mid-stream: records are still arriving
        await sender
        audit.start()
        got = await wait_chain(kafka.topic_prefix, lambda es: len(_events_only(es)) >= total, timeout_s=90)
        await asyncio.sleep(1.5)  # nothing more may arrive
        got = await chain(kafka.topic_prefix)
    finally:
        audit.stop()
    events = _events_only(got)
    subjects = Counter(e.event.subject for e in events)
    assert len(events) == total and all(n == 1 for n in subjects.values()), subjects.most_common(3)
    offsets = Counter((e.event.source_partition, e.event.source_offset) for e in events)
    assert all(n == 1 for n in offsets.values())
    public = read_key(keys_dir / "trusted" / "audit.pub").public_key
    backend = signature_backend()
    verdict = verify(kafka.topic_prefix, got, lambda m, s: backend.verify(public, m, s))
    assert verdict.ok, verdict
    assert got[0].prev_hash == genesis(kafka.topic_prefix)
    assert verdict.checkpoints == len(got) - total >= total // 7 - 1


async def test_intake_continues_while_elasticsearch_is_down_and_index_catches_up(
    publisher: Publisher, kafka: KafkaSettings, keys_dir: Path, tmp_path: Path
) -> None:
    stream = kafka.topic_prefix
    audit = AuditProcess(kafka, keys_dir, tmp_path / "audit.log", es_url="http://127.0.0.1:1")
    audit.start()
    try:
        for i in range(12):
            await publisher.send(
                publisher.topics.audit.name, "aggregator", publisher.seal("aggregator", _event(i))
            )
        got = await wait_chain(stream, lambda es: len(_events_only(es)) >= 12)
        assert await search(stream, {"match_all": {}}, timeout_s=2) == []
        assert "elasticsearch unavailable" in audit.log_path.read_text()
    finally:
        audit.stop()
    audit.es_url = AuditProcess.es_url
    audit.start()
    try:
        hits = await search(stream, {"match_all": {}}, want=len(got))
    finally:
        audit.stop()
    assert [h["event"]["sequence"] for h in hits] == [e.seq for e in got]
    assert hits[-1]["event"]["hash"] == got[-1].hash.hex()
