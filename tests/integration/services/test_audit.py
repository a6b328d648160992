"""The audit service against real Kafka, PostgreSQL and Elasticsearch: intake, rejections, tamper checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from qflare.crypto import generate_key
from qflare.kafka import KafkaSettings
from qflare.protocol import seal
from qflare.protocol.control import AuditEvent
from qflare.protocol.training import RoundComplete, RoundTask
from tests.integration.services.audit_harness import (
    DSN,
    AuditProcess,
    Publisher,
    audit_fingerprint,
    search,
    wait_chain,
)

JOB = "job-audit"


async def publish_round(publisher: Publisher, rnd: int) -> None:
    t = publisher.topics
    task = RoundTask(JOB, rnd, rnd - 1, "fedavg", ("dev-a", "dev-b"), 2_000_000_000_000, 2, 1)
    await publisher.send(t.rounds.name, f"{JOB}:{rnd}", publisher.seal("scheduler", task, rnd))
    event = AuditEvent(
        "update.rejected",
        "warning",
        "registry",
        reason="wrong_round",
        subject="dev-a",
        detail={"job_id": JOB, "round": rnd},
    )
    await publisher.send(t.audit.name, "registry", publisher.seal("registry", event))
    done = RoundComplete(JOB, rnd, "completed", rnd, 2, 100, ("dev-a", "dev-b"), b"\x01" * 32)
    await publisher.send(t.rounds_complete.name, JOB, publisher.seal("aggregator", done, rnd))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from services.audit.cli import app; app()", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_signed_events_are_chained_in_order_and_indexed(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings
) -> None:
    for rnd in (1, 2):
        await publish_round(publisher, rnd)
    stream = kafka.topic_prefix
    got = await wait_chain(stream, lambda es: sum(e.event.type != "audit.checkpoint" for e in es) >= 6)
    events = [e for e in got if e.event.type != "audit.checkpoint"]
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    # Each topic is read in its own order; every round's task precedes its completion.
    for rnd in (1, 2):
        types = [e.event.type for e in events if e.event.round == rnd]
        assert sorted(types) == ["round.completed", "round.opened", "update.rejected"]
    by_type = {(e.event.type, e.event.round): e.event for e in events}
    assert by_type[("round.opened", 1)].actor == "scheduler"
    assert by_type[("update.rejected", 2)].actor == "registry"
    assert by_type[("update.rejected", 2)].outcome == "rejected"
    assert by_type[("round.completed", 1)].actor == "aggregator"
    assert by_type[("round.completed", 2)].job == JOB
    assert any(e.event.type == "audit.checkpoint" and e.signature for e in got)  # 5 per checkpoint

    hits = await search(stream, {"term": {"qflare.round": 2}}, want=3)
    assert sorted(h["event"]["action"] for h in hits) == [
        "round.completed",
        "round.opened",
        "update.rejected",
    ]
    assert {h["qflare"]["job_id"] for h in hits} == {JOB}
    assert all(h["event"]["sequence"] >= 1 and h["@timestamp"] for h in hits)
    failure = [h for h in hits if h["event"]["outcome"] == "failure"]
    assert [h["user"]["name"] for h in failure] == ["registry"]


async def test_forged_and_garbage_records_are_recorded_as_rejections(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings
) -> None:
    t = publisher.topics
    stranger = generate_key().signer()
    forged = AuditEvent("device.revoked", "critical", "registry", reason="forged", subject="dev-x")
    await publisher.send(t.audit.name, "registry", seal(forged, stranger, t.audit.channel, sender="registry"))
    await publisher.send(t.audit.name, "registry", b"\x93not an envelope")
    genuine = AuditEvent("device.revoked", "info", "registry", subject="dev-y")
    await publisher.send(t.audit.name, "registry", publisher.seal("registry", genuine))
    got = await wait_chain(kafka.topic_prefix, lambda es: len(es) >= 3)
    rejected = [e.event for e in got if e.event.type == "message.rejected"]
    assert len(rejected) == 2
    assert all(e.outcome == "rejected" and e.source_topic == t.audit.name for e in rejected)
    assert {e.reason for e in rejected} >= {"unknown_key"}
    assert rejected[0].detail["claimed_sender"] == "registry"
    assert rejected[1].detail["record_sha256"]
    assert [e.event.subject for e in got if e.event.type == "device.revoked"] == ["dev-y"]


async def test_verify_names_the_tampered_seq(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings, keys_dir: Path
) -> None:
    for rnd in (1, 2, 3):
        await publish_round(publisher, rnd)
    stream = kafka.topic_prefix
    await wait_chain(stream, lambda es: len(es) >= 10)
    args = ("--stream", stream, "--keys-dir", str(keys_dir), "--key-fingerprint", audit_fingerprint(keys_dir))
    shown = cli("query", "--stream", stream, "--round", "2", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(rows) == 3 and {r["round"] for r in rows} == {2}
    ok = cli("verify", *args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK" in ok.stdout and "signed checkpoints" in ok.stdout

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            "UPDATE audit.chain SET reason = 'nothing to see' WHERE stream = %s AND seq = 7", (stream,)
        )
    bad = cli("verify", *args)
    assert bad.returncode == 1
    assert "BROKEN at seq 7" in bad.stdout and "modified" in bad.stdout

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DELETE FROM audit.chain WHERE stream = %s AND seq = 4", (stream,))
    gone = cli("verify", *args)
    assert gone.returncode == 1
    assert "BROKEN at seq 4" in gone.stdout and "missing" in gone.stdout
