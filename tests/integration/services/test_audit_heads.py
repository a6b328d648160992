"""Signed chain heads against real Kafka and PostgreSQL: truncation, rewriting, fake checkpoints, key pinning.

Each test shows `qflare audit verify` before the tampering (exit 0) and after it: before heads
existed, deleting the tail, emptying the chain or rewriting the entries after the last checkpoint
(links recomputed) all verified OK, and a fake `audit.checkpoint` event broke verification.
"""

from __future__ import annotations

from pathlib import Path

from qflare.crypto import generate_key, write_key
from qflare.kafka import KafkaSettings
from qflare.protocol import seal
from qflare.protocol.control import AuditEvent, AuditHead
from qflare.runner import EXIT_NOT_TRANSIENT
from services.audit.chain import CHECKPOINT
from services.audit.cli import EXIT_UNVERIFIABLE
from services.audit.heads import head_key
from tests.integration.services.audit_harness import (
    AuditProcess,
    Publisher,
    chain,
    delete_after,
    rewrite_from,
    run_verify,
    wait_chain,
    wait_head,
)


async def publish_events(publisher: Publisher, count: int) -> None:
    for i in range(count):
        event = AuditEvent("device.revoked", "info", "registry", subject=f"dev-{i}")
        await publisher.send(publisher.topics.audit.name, "registry", publisher.seal("registry", event))


async def test_deleted_tail_and_emptied_chain_are_detected(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings, keys_dir: Path
) -> None:
    stream = kafka.topic_prefix
    await publish_events(publisher, 11)
    await wait_chain(stream, lambda es: len(es) >= 13)  # 11 events, 2 checkpoints (every 5)
    length = await wait_head(audit, stream)
    before = run_verify(stream, keys_dir)
    assert before.returncode == 0, before.stdout + before.stderr
    assert f"OK, {length} entries" in before.stdout and f"signed head at seq {length}" in before.stdout
    audit.stop()

    delete_after(stream, 7)  # the tail, checkpoint at seq 12 included
    tail = run_verify(stream, keys_dir)
    assert tail.returncode == 1, tail.stdout + tail.stderr
    assert f"BROKEN at seq 8: entries 8..{length} are missing" in tail.stdout
    assert "tail deleted" in tail.stdout
    from_file = run_verify(stream, keys_dir, "--head-file", str(audit.head_file))
    assert from_file.returncode == 1 and "BROKEN at seq 8" in from_file.stdout

    # A forged head (a stranger's key, claiming to be the audit service) vouches for nothing.
    stranger = generate_key().signer()
    head = AuditHead(stream, 7, (await chain(stream))[-1].hash, 1)
    forged = seal(head, stranger, publisher.topics.audit_heads.channel, sender="audit")
    await publisher.producer.send_and_wait(publisher.topics.audit_heads.name, forged, key=head_key(stream))
    still = run_verify(stream, keys_dir)
    assert still.returncode == 1 and "BROKEN at seq 8" in still.stdout
    assert "ignored 1 records" in still.stdout

    # Restarting the service on the shortened chain neither extends it nor vouches for it.
    assert audit.proc is not None
    audit.proc.spawn()
    assert audit.proc.proc is not None and audit.proc.proc.wait(timeout=120) == EXIT_NOT_TRANSIENT
    assert "is shorter than its signed head" in audit.log_path.read_text()

    delete_after(stream, 0)
    empty = run_verify(stream, keys_dir)
    assert empty.returncode == 1, empty.stdout + empty.stderr
    assert f"BROKEN at seq 1: the chain is empty, but the signed head at seq {length}" in empty.stdout


async def test_entries_rewritten_after_the_last_checkpoint_are_detected(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings, keys_dir: Path
) -> None:
    stream = kafka.topic_prefix
    await publish_events(publisher, 8)
    await wait_chain(stream, lambda es: len(es) >= 9)  # 8 events, a checkpoint at seq 6
    length = await wait_head(audit, stream)
    last_checkpoint = max(e.seq for e in await chain(stream) if e.event.type == CHECKPOINT)
    assert last_checkpoint < length
    assert run_verify(stream, keys_dir).returncode == 0
    audit.stop()

    # Links recomputed from the first entry no checkpoint covers: the chain alone verifies.
    await rewrite_from(stream, last_checkpoint + 1, "nothing to see")
    after = run_verify(stream, keys_dir)
    assert after.returncode == 1, after.stdout + after.stderr
    first = last_checkpoint + 1
    # Up to the first signed head that no longer matches (the latest, or one published before it).
    assert f"BROKEN at seq {first}: " in after.stdout and "rewritten" in after.stdout


async def test_reserved_event_names_are_refused_and_never_break_verification(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings, keys_dir: Path
) -> None:
    stream = kafka.topic_prefix
    await publish_events(publisher, 2)
    await wait_chain(stream, lambda es: len(es) >= 2)
    await wait_head(audit, stream)
    assert run_verify(stream, keys_dir).returncode == 0

    # A trusted service signs events named like the chain's own checkpoints and heads.
    for name in ("audit.checkpoint", "audit.head"):
        fake = AuditEvent(name, "info", "aggregator", detail={"upto_seq": 1})
        await publisher.send(publisher.topics.audit.name, "aggregator", publisher.seal("aggregator", fake))
    got = await wait_chain(stream, lambda es: sum(e.event.reason == "reserved_event" for e in es) == 2)
    refused = [e.event for e in got if e.event.reason == "reserved_event"]
    assert {(e.type, e.outcome, e.actor) for e in refused} == {("message.rejected", "rejected", "aggregator")}
    assert all(e.signature is None for e in got if e.event.type != CHECKPOINT)
    await wait_head(audit, stream)
    after = run_verify(stream, keys_dir)
    assert after.returncode == 0, after.stdout + after.stderr


async def test_the_verifier_refuses_a_key_that_does_not_match_its_pin(
    audit: AuditProcess, publisher: Publisher, kafka: KafkaSettings, keys_dir: Path
) -> None:
    stream = kafka.topic_prefix
    await publish_events(publisher, 1)
    await wait_chain(stream, lambda es: len(es) >= 1)
    await wait_head(audit, stream)
    assert run_verify(stream, keys_dir).returncode == 0

    unpinned = run_verify(stream, keys_dir, pin=False)
    assert unpinned.returncode == EXIT_UNVERIFIABLE and "no pinned key" in unpinned.stderr
    zeros = "SHA256:" + ":".join(["00"] * 32)
    wrong = run_verify(stream, keys_dir, "--key-fingerprint", zeros, pin=False)
    assert wrong.returncode == EXIT_UNVERIFIABLE and "refusing it" in wrong.stderr

    # Someone swaps the public key in the keys directory for one of their own.
    write_key(keys_dir / "trusted" / "audit.pub", generate_key().public_only(), force=True)
    swapped = run_verify(stream, keys_dir)
    assert swapped.returncode == EXIT_UNVERIFIABLE, swapped.stdout + swapped.stderr
    assert "not the pinned" in swapped.stderr
