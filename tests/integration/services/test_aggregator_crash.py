"""kill -9 mid-round, restart, finish: the global model is bit-identical to an undisturbed run."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import psycopg

from devstack.settings import StackSettings
from qflare.fl import weighted_average
from qflare.kafka import KafkaSettings
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    SimDevice,
    global_model,
    perturbed,
    rejections,
    round_results,
)

EXAMPLES = [600, 50, 333, 17, 1000]


async def _setup(plane: ControlPlane, job: str, keys: list[SimDevice]) -> list[SimDevice]:
    devices = [await plane.device(d.device_id, key=d.key) for d in keys]
    await plane.start_job(job)
    await global_model(plane.kafka, plane.keys_dir, job, 0)
    await plane.open_round(job, 1, 0, [d.device_id for d in devices], deadline_s=300, min_updates=5)
    return devices


def _records(devices: list[SimDevice], job: str) -> list[list[bytes]]:
    # Device 2 streams its update in chunks, so the kill can land in the middle of one.
    return [
        d.update(job, 1, 0, perturbed(i), n, loss=0.1 * i, chunk_bytes=100_000 if i == 2 else None)
        for i, (d, n) in enumerate(zip(devices, EXAMPLES, strict=True))
    ]


async def _count(conn: psycopg.AsyncConnection[tuple[Any, ...]], sql: str, arg: str) -> int:
    cur = await conn.execute(sql, (arg,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _wait_mid_round(conn: psycopg.AsyncConnection[tuple[Any, ...]], job: str, topic: str) -> None:
    """Until two updates are committed and a half-received chunk stream is in the checkpoint."""
    for _ in range(600):
        included = await _count(conn, "SELECT count(*) FROM aggregator.included WHERE job_id = %s", job)
        streaming = await _count(
            conn, "SELECT count(*) FROM aggregator.offsets WHERE topic = %s AND open_streams <> '[]'", topic
        )
        if included >= 2 and streaming:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the aggregator never committed the first updates")


async def test_kill9_mid_round_gives_the_same_model_bit_for_bit(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, unique: str, stack: StackSettings
) -> None:
    other = KafkaSettings(topic_prefix=f"t{unique}u.")
    calm_job, crash_job = f"calm-{unique}", f"crash-{unique}"
    calm = AggregatorProcess(other, keys_dir, tmp_path / "calm.log", eval_examples=0)
    crashy = AggregatorProcess(kafka, keys_dir, tmp_path / "crashy.log", eval_examples=0)
    calm_plane, crash_plane = ControlPlane(other, keys_dir), ControlPlane(kafka, keys_dir)
    await calm_plane.start()
    await crash_plane.start()
    calm.start()
    crashy.start()
    try:
        # Same device keys, weights and example counts in both runs; only the job differs.
        keys = [await calm_plane.device(f"k{i}-{unique}") for i in range(5)]
        calm_devices = await _setup(calm_plane, calm_job, keys)
        crash_devices = await _setup(crash_plane, crash_job, keys)

        # The undisturbed run.
        for device, records in zip(calm_devices, _records(calm_devices, calm_job), strict=True):
            await calm_plane.send(calm_plane.topics.updates.name, device.device_id, *records)
        (calm_done,) = await round_results(
            other, keys_dir, lambda got: any(r.job_id == calm_job for r in got)
        )

        # The disturbed run: two updates and half a chunked one, kill -9, restart, the rest.
        topic = crash_plane.topics.updates.name
        sent = _records(crash_devices, crash_job)
        ids = [d.device_id for d in crash_devices]
        half = len(sent[2]) // 2
        assert half >= 2, "device 2's update must span several chunks"
        await crash_plane.send(topic, ids[0], *sent[0])
        await crash_plane.send(topic, ids[1], *sent[1])
        await crash_plane.send(topic, ids[2], *sent[2][:half])
        async with await psycopg.AsyncConnection.connect(stack.postgres_dsn, autocommit=True) as conn:
            await _wait_mid_round(conn, crash_job, topic)
            await crash_plane.send(topic, ids[3], *sent[3])  # in flight or committed: either way once
            crashy.kill9()
            crashy.start()
            await crash_plane.send(topic, ids[2], *sent[2][half:])
            await crash_plane.send(topic, ids[0], *sent[0])  # a device resending: must not count twice
            await crash_plane.send(topic, ids[4], *sent[4])
            (crash_done,) = await round_results(
                kafka, keys_dir, lambda got: any(r.job_id == crash_job for r in got)
            )
            cur = await conn.execute(
                "SELECT count(*), count(DISTINCT device_id) FROM aggregator.included WHERE job_id = %s",
                (crash_job,),
            )
            assert await cur.fetchone() == (5, 5)
        await rejections(kafka, keys_dir, lambda found: "replay" in found)

        assert calm_done.status == crash_done.status == "completed"
        assert crash_done.num_updates == calm_done.num_updates == 5
        assert crash_done.num_examples == calm_done.num_examples == sum(EXAMPLES)
        assert crash_done.metrics["train_loss"] == calm_done.metrics["train_loss"]
        calm_model = await global_model(other, keys_dir, calm_job, 1)
        crash_model = await global_model(kafka, keys_dir, crash_job, 1)
        assert [t.name for t in calm_model.tensors] == [t.name for t in crash_model.tensors]
        for a, b in zip(calm_model.tensors, crash_model.tensors, strict=True):
            assert a.array.tobytes() == b.array.tobytes(), a.name
        assert crashy.starts == 2 and crashy.alive and calm.alive
    finally:
        calm.stop()
        crashy.stop()
        await calm_plane.stop()
        await crash_plane.stop()


async def test_repeated_kill9_at_random_moments_counts_each_update_once(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, unique: str
) -> None:
    rng = random.Random(unique)
    job = f"fuzz-{unique}"
    proc = AggregatorProcess(kafka, keys_dir, tmp_path / "fuzz.log", eval_examples=0)
    plane = ControlPlane(kafka, keys_dir)
    await plane.start()
    proc.start()
    try:
        devices = [await plane.device(f"f{i}-{unique}") for i in range(8)]
        examples = [rng.randint(1, 2000) for _ in devices]
        weights = [perturbed(100 + i, scale=0.05) for i in range(len(devices))]
        await plane.start_job(job)
        await global_model(kafka, keys_dir, job, 0)
        await plane.open_round(job, 1, 0, [d.device_id for d in devices], deadline_s=300, min_updates=8)
        topic = plane.topics.updates.name
        for group in (devices[:3], devices[3:6], devices[6:]):
            for device in group:
                i = devices.index(device)
                chunk = 150_000 if i % 3 == 1 else None
                records = device.update(job, 1, 0, weights[i], examples[i], chunk_bytes=chunk)
                await plane.send(topic, device.device_id, *records)
            # Anywhere: mid-batch, mid-stream, mid-close, or before the updates are even read.
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            proc.kill9()
            proc.start()
        results = await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
        (done,) = [r for r in results if r.job_id == job]
        assert done.num_updates == 8 and done.num_examples == sum(examples)
        model = await global_model(kafka, keys_dir, job, 1)
        # Bit-identical to the reference maths on the same updates, whatever the kills interrupted.
        expected = weighted_average(list(zip(weights, examples, strict=True)))
        for tensor, want in zip(model.tensors, expected, strict=True):
            assert tensor.array.tobytes() == want.tobytes(), tensor.name
        assert proc.starts == 4 and proc.alive
    finally:
        proc.stop()
        await plane.stop()
