"""Poison records against the real aggregator: none stops it, and the job goes on.

Each record here stopped the aggregator for good before the poison-record policy:
an absurd tensor shape with no data made numpy raise a plain ``ValueError``
(exit, batch uncommitted, the same record again after every restart), and two
streams declaring the message limit held the whole reassembly budget so that an
honest device's chunked update was refused.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import TopicPartition

from qflare.kafka import KafkaSettings
from qflare.protocol import Tensor, seal, wire
from qflare.protocol.control import AuditEvent
from qflare.protocol.envelope import Chunk, new_message_id, seal_parts
from qflare.protocol.limits import MIB
from qflare.protocol.messages import ModelChunk
from qflare.protocol.training import ModelUpdate
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    SimDevice,
    global_model,
    perturbed,
    rejections,
    round_results,
)
from tests.integration.services.harness import audit_events, delete_to_end

HUGE = (1 << 31) - 1


class _AbsurdUpdate(ModelUpdate):
    """An update whose first tensor declares a shape numpy cannot describe, with no data."""

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["tensors"][0] = {
            "name": "fc1.weight",
            "dtype": "<f4",
            "shape": [0, HUGE, HUGE, HUGE],
            "data": b"",
        }
        return body


def _absurd(device: SimDevice, job: str) -> bytes:
    placeholder = (Tensor.of("fc1.weight", np.zeros(1, dtype=np.float32)),)
    body = _AbsurdUpdate(job, 1, device.device_id, 0, 10, placeholder, {"loss": 0.1})
    return seal(body, device.signer, device.channel, sender=device.device_id, round=1)


def _flood_chunk(device: SimDevice, size: int) -> bytes:
    """The first chunk of a stream that declares ``size`` bytes and never sends the rest."""
    piece = ModelChunk("model_update", size, 0, hashlib.sha256(b"never").digest(), b"x" * 1000)
    stream = new_message_id()
    return seal_parts(
        ModelChunk.TYPE,
        wire.pack_parts(piece.to_body()),
        device.signer,
        device.channel,
        sender=device.device_id,
        round=1,
        chunk=Chunk(stream, 0, 4096),
    )


async def test_poison_records_do_not_stop_the_aggregator_and_the_round_completes(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"job-{unique}"
    good = [await plane.device(f"g{i}-{unique}") for i in range(2)]
    bad = await plane.device(f"bad-{unique}")  # enrolled, not even selected
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)
    await plane.open_round(job, 1, 0, [d.device_id for d in good], min_updates=2)
    updates = plane.topics.updates.name

    # An absurd shape, keys with NUL, unsigned garbage, and a stream flood that declares the limit.
    await plane.send(updates, bad.device_id, _absurd(bad, job))
    await plane.producer.send_and_wait(updates, _absurd(bad, job), key=b"bad\x00key")
    rng = random.Random(10)
    for i in range(300):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        await plane.producer.send(updates, junk, key=b"junk\x00" + str(i).encode())
    await plane.producer.flush()
    for _ in range(2):
        await plane.send(updates, bad.device_id, _flood_chunk(bad, 256 * MIB))
    # A selected device declaring a stream that cannot be the job's model: refused before any buffer.
    await plane.send(updates, good[0].device_id, _flood_chunk(good[0], 8 * MIB))

    # The honest devices' updates, one of them chunked, still count.
    await plane.send(updates, good[0].device_id, *good[0].update(job, 1, 0, perturbed(1), 100))
    chunked = good[1].update(job, 1, 0, perturbed(2), 100, chunk_bytes=200_000)
    assert len(chunked) > 1
    await plane.send(updates, good[1].device_id, *chunked)

    (done,) = await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
    assert done.status == "completed" and sorted(done.included) == sorted(d.device_id for d in good)
    assert aggregator.alive and aggregator.starts == 1

    found = await rejections(kafka, keys_dir, lambda by: {"limit", "quota", "shape"} <= set(by))
    assert all(e.subject is None or "\x00" not in e.subject for events in found.values() for e in events)
    # 300 garbage records cost a bounded number of audit events (the rest are counted in summaries).
    assert sum(len(v) for v in found.values()) < 40


async def test_an_offset_gap_in_the_updates_topic_is_audited(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess
) -> None:
    updates = plane.topics.updates.name
    await plane.send(updates, "k", b"\x93first, refused")  # the aggregator stores its position past it
    await rejections(kafka, keys_dir, lambda by: "limit" in by)
    aggregator.stop()

    for i in range(3):  # arrive while it is down, and are deleted before it reads them
        await plane.send(updates, "k", b"\x93lost " + bytes([i]))
    ends = await delete_to_end(kafka, plane.topics.updates)

    aggregator.start()
    events = await audit_events(
        kafka, keys_dir, lambda ev: any(e.source == "aggregator" and e.event == "offset.gap" for e in ev)
    )
    (gap,) = [e for e in events if e.source == "aggregator" and e.event == "offset.gap"]
    assert gap.subject == updates and gap.severity == "critical"
    assert gap.detail["skipped"] == 3
    partition = gap.detail["partition"]
    assert isinstance(partition, int)
    tp = TopicPartition(updates, partition)
    assert gap.detail["resumed_offset"] == ends[tp] and gap.detail["first_offset"] == ends[tp] - 3
    assert aggregator.alive


async def test_an_offset_gap_in_a_control_topic_is_audited(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess
) -> None:
    jobs = plane.topics.jobs.name
    await plane.send(jobs, "k", b"\x93first, refused")  # its position is checkpointed past it
    await audit_events(kafka, keys_dir, lambda ev: any(_refused(e, jobs) for e in ev))
    aggregator.stop()

    for i in range(3):  # arrive while it is down, and are deleted before it reads them
        await plane.send(jobs, "k", b"\x93lost " + bytes([i]))
    ends = await delete_to_end(kafka, plane.topics.jobs)

    aggregator.start()
    events = await audit_events(
        kafka, keys_dir, lambda ev: any(e.source == "aggregator" and e.event == "offset.gap" for e in ev)
    )
    (gap,) = [e for e in events if e.source == "aggregator" and e.event == "offset.gap"]
    assert gap.subject == jobs and gap.severity == "critical" and gap.detail["skipped"] == 3
    partition = gap.detail["partition"]
    assert isinstance(partition, int)
    assert gap.detail["resumed_offset"] == ends[TopicPartition(jobs, partition)]

    # The position moved past the gap with its audit record: a restart does not report it again.
    aggregator.stop()
    aggregator.start()
    await plane.send(jobs, "k", b"\x93after the restart")
    later = await audit_events(kafka, keys_dir, lambda ev: sum(_refused(e, jobs) for e in ev) >= 2)
    assert [e.event for e in later if e.source == "aggregator"].count("offset.gap") == 1
    assert aggregator.alive


def _refused(event: AuditEvent, topic: str) -> bool:
    return event.source == "aggregator" and event.reason == "limit" and event.detail.get("topic") == topic
