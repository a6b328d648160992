"""What devices do is in the audit chain: every model update (accepted or refused) and every
enrolment result, with the real aggregator and audit services."""

from __future__ import annotations

from pathlib import Path

from qflare.kafka import KafkaSettings
from qflare.protocol import wire
from qflare.protocol.devices import EnrollmentResult
from qflare.protocol.envelope import new_message_id, parse_envelope
from qflare.protocol.messages import ModelChunk
from services.audit.chain import Entry
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    perturbed,
    round_results,
)
from tests.integration.services.audit_harness import AuditProcess, Publisher, drop_indices, wait_chain

#: What an update entry may say: metadata only, never a tensor.
UPDATE_DETAIL = {"message_type", "severity", "source", "event_id", "job_id", "round"}


def _updates(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.event.type in ("update.accepted", "update.rejected")]


async def test_accepted_and_rejected_updates_are_in_the_chain(
    kafka: KafkaSettings,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    audit: AuditProcess,
    keys_dir: Path,
    unique: str,
) -> None:
    job = f"job-{unique}"
    a, b, outsider = [await plane.device(f"{name}-{unique}") for name in ("a", "b", "x")]
    await plane.start_job(job)
    await plane.open_round(job, 1, 0, [a.device_id, b.device_id], min_updates=2)
    sent = {
        a.device_id: a.update(job, 1, 0, perturbed(1), 300),
        b.device_id: b.update(job, 1, 0, perturbed(2), 100, chunk_bytes=200_000),
        outsider.device_id: outsider.update(job, 1, 0, perturbed(3), 50),
    }
    for device_id, records in sent.items():
        await plane.send(plane.topics.updates.name, device_id, *records)
    (done,) = await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
    assert done.status == "completed" and sorted(done.included) == sorted([a.device_id, b.device_id])

    chain = await wait_chain(kafka.topic_prefix, lambda es: len(_updates(es)) >= 3)
    entries = {e.event.subject: e.event for e in _updates(chain)}
    assert len(_updates(chain)) == 3
    for device_id, records in sent.items():
        event = entries[device_id]
        head = parse_envelope(records[0]).header
        assert event.actor == "aggregator" and (event.job, event.round) == (job, 1)
        if device_id == outsider.device_id:
            assert (event.type, event.outcome, event.reason) == ("update.rejected", "rejected", "unselected")
            where = {"topic", "partition", "offset", "field", "error"}
            assert set(event.detail) == UPDATE_DETAIL | where | {"digest"}
        else:
            assert (event.type, event.outcome) == ("update.accepted", "accepted")
            assert set(event.detail) == UPDATE_DETAIL | {"digest", "base_version", "num_examples"}
        if head.chunk is None:
            ref, digest = head.id, head.body_digest
        else:
            # Chunked: the entry names the stream (the reassembled message) and the whole body's digest.
            assert len(records) > 1
            ref, digest = head.chunk.stream, _stream_digest(records[0])
        assert event.ref_id == ref and event.detail["digest"] == digest.hex()
    assert entries[a.device_id].detail["num_examples"] == 300


def _stream_digest(first_chunk: bytes) -> bytes:
    limits = wire.WireLimits(1 << 26, 16, 1000, 100, 1000, 1 << 26)
    body = ModelChunk.from_body(wire.unpack(parse_envelope(first_chunk).body, limits, root="body"))
    return body.digest


async def test_enrolment_results_are_in_the_chain(
    kafka: KafkaSettings, keys_dir: Path, audit: AuditProcess, unique: str
) -> None:
    plane = Publisher(kafka, keys_dir)
    await plane.start()
    try:
        enrolment = new_message_id()
        result = EnrollmentResult(
            f"dev-{unique}", enrolment, b"\x07" * 16, "rejected", "token_reused", "body.token_id", "used"
        )
        t = plane.topics
        await plane.send(t.enrollment_results.name, result.device_id, plane.seal("registry", result))
        chain = await wait_chain(
            kafka.topic_prefix, lambda es: any(e.event.type == "device.enrollment_result" for e in es)
        )
    finally:
        await plane.stop()
        await drop_indices(kafka.topic_prefix)
    (event,) = [e.event for e in chain if e.event.type == "device.enrollment_result"]
    assert (event.actor, event.outcome, event.reason) == ("registry", "rejected", "token_reused")
    assert event.subject == result.device_id and event.ref_id == enrolment
    assert event.detail["field"] == "body.token_id" and event.detail["key_id"] == "07" * 16
