"""A buffered strategy through the real aggregator: kill -9 mid-round, restart, the same model bit for bit.

The strategy is the test-only coordinate-wise median (``median_strategy``), which
the aggregator processes import through ``plugins/sitecustomize.py``. One
aggregator keeps the round's updates in memory; the other has a memory budget of
0 bytes, so every update spills to disk, and is killed mid-round. Both publish
the same version 1: the median of exactly the five accepted updates, with the
strategy's server group after the weights.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from devstack.settings import StackSettings
from qflare.kafka import KafkaSettings
from qflare.protocol.tensors import split_groups
from qflare.protocol.training import GlobalModel
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    SimDevice,
    global_model,
    perturbed,
    rejections,
    round_results,
)
from tests.integration.services.median_strategy import DELTA, NAME

PLUGINS = Path(__file__).with_name("plugins")
ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = [600, 50, 333, 17, 1000]
STEPS = [3, 1, 7, 2, 5]


@dataclass
class BufferedAggregator(AggregatorProcess):
    """The aggregator with the test strategy importable, and its buffer's budget and spill folder."""

    buffer_max_bytes: int = 1 << 30
    spill_dir: Path | None = None

    def env(self) -> dict[str, str]:
        env = super().env()
        path = [str(PLUGINS), str(ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        env["QFLARE_AGGREGATOR_BUFFER_MAX_BYTES"] = str(self.buffer_max_bytes)
        if self.spill_dir is not None:
            env["QFLARE_AGGREGATOR_BUFFER_DIR"] = str(self.spill_dir)
        return env


async def _setup(plane: ControlPlane, job: str, keys: list[SimDevice]) -> tuple[list[SimDevice], GlobalModel]:
    devices = [await plane.device(d.device_id, key=d.key) for d in keys]
    await plane.start_job(job, strategy={"name": NAME})
    first = await global_model(plane.kafka, plane.keys_dir, job, 0)
    ids = [d.device_id for d in devices]
    await plane.open_round(job, 1, 0, ids, deadline_s=300, min_updates=5, strategy=NAME)
    return devices, first


def _records(devices: list[SimDevice], job: str) -> list[list[bytes]]:
    # Device 2 streams its update in chunks, so the kill can land in the middle of one.
    return [
        d.update(
            job,
            1,
            0,
            perturbed(i),
            n,
            loss=0.1 * i,
            chunk_bytes=100_000 if i == 2 else None,
            metrics={"local_steps": float(steps)},
        )
        for i, (d, n, steps) in enumerate(zip(devices, EXAMPLES, STEPS, strict=True))
    ]


async def _count(conn: psycopg.AsyncConnection[tuple[Any, ...]], sql: str, arg: str) -> int:
    cur = await conn.execute(sql, (arg,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _wait_mid_round(conn: psycopg.AsyncConnection[tuple[Any, ...]], job: str, topic: str) -> None:
    """Until two buffered updates are committed and a half-received chunk stream is checkpointed."""
    for _ in range(600):
        stored = await _count(conn, "SELECT count(*) FROM aggregator.round_updates WHERE job_id = %s", job)
        streaming = await _count(
            conn, "SELECT count(*) FROM aggregator.offsets WHERE topic = %s AND open_streams <> '[]'", topic
        )
        if stored >= 2 and streaming:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the aggregator never committed the first buffered updates")


def _groups(model: GlobalModel) -> dict[str, list[tuple[str, bytes]]]:
    return {
        g: [(t.name, t.array.tobytes()) for t in tensors]
        for g, tensors in split_groups(model.tensors, [DELTA]).items()
    }


async def test_a_buffered_round_survives_kill9_and_gives_the_same_model(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, unique: str, stack: StackSettings
) -> None:
    other = KafkaSettings(topic_prefix=f"t{unique}b.")
    calm_job, crash_job = f"calm-{unique}", f"crash-{unique}"
    spill = tmp_path / "spill"
    calm = BufferedAggregator(other, keys_dir, tmp_path / "calm.log", eval_examples=0)
    crashy = BufferedAggregator(
        kafka, keys_dir, tmp_path / "crashy.log", eval_examples=0, buffer_max_bytes=0, spill_dir=spill
    )
    calm_plane, crash_plane = ControlPlane(other, keys_dir), ControlPlane(kafka, keys_dir)
    await calm_plane.start()
    await crash_plane.start()
    calm.start()
    crashy.start()
    try:
        keys = [await calm_plane.device(f"m{i}-{unique}") for i in range(5)]
        calm_devices, calm_v0 = await _setup(calm_plane, calm_job, keys)
        crash_devices, _ = await _setup(crash_plane, crash_job, keys)
        # Version 0 carries the strategy's initial server group after the weights.
        v0 = _groups(calm_v0)
        assert [n for n, _ in v0[DELTA]] == [n for n, _ in v0["weights"]]
        assert calm_v0.metadata["server_groups"] == DELTA
        assert all(not np.frombuffer(data, np.float32).any() for _, data in v0[DELTA])

        # The undisturbed run; device 0 first forgets the metric the strategy requires.
        calm_topic = calm_plane.topics.updates.name
        forgetful = calm_devices[0].update(calm_job, 1, 0, perturbed(0), EXAMPLES[0])
        await calm_plane.send(calm_topic, calm_devices[0].device_id, *forgetful)
        for device, records in zip(calm_devices, _records(calm_devices, calm_job), strict=True):
            await calm_plane.send(calm_topic, device.device_id, *records)
        (calm_done,) = await round_results(
            other, keys_dir, lambda got: any(r.job_id == calm_job for r in got)
        )
        missing = await rejections(other, keys_dir, lambda found: "metric" in found)
        assert missing["metric"][0].detail["field"] == "body.metrics.local_steps"

        # The disturbed run, spilling every update: two and half a chunked one, kill -9, restart, the rest.
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
            assert list(spill.rglob("*.npy")), "a budget of 0 bytes spills every update"
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
            # The round's stored updates went with its close.
            for job in (calm_job, crash_job):
                left = await _count(
                    conn, "SELECT count(*) FROM aggregator.round_updates WHERE job_id = %s", job
                )
                assert left == 0
        await rejections(kafka, keys_dir, lambda found: "replay" in found)

        assert calm_done.status == crash_done.status == "completed"
        assert crash_done.num_updates == calm_done.num_updates == 5
        assert crash_done.num_examples == calm_done.num_examples == sum(EXAMPLES)
        calm_model = await global_model(other, keys_dir, calm_job, 1)
        crash_model = await global_model(kafka, keys_dir, crash_job, 1)
        assert _groups(crash_model) == _groups(calm_model)
        # It is the median of the five updates, and the server group is the model's change.
        first = [np.frombuffer(data, np.float32) for _, data in v0["weights"]]
        for i, (name, data) in enumerate(_groups(calm_model)["weights"]):
            expected = np.median(np.stack([perturbed(k)[i] for k in range(5)]), axis=0).astype(np.float32)
            got = np.frombuffer(data, np.float32).reshape(expected.shape)
            assert got.tobytes() == expected.tobytes(), name
            delta = np.frombuffer(_groups(calm_model)[DELTA][i][1], np.float32)
            assert delta.tobytes() == (got.reshape(-1) - first[i]).astype(np.float32).tobytes()
        assert not list(spill.rglob("*.npy")), "the closed round's spilled files are removed"
    finally:
        crashy.stop()
        calm.stop()
        await calm_plane.stop()
        await crash_plane.stop()
