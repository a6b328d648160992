"""Checkpoints every K updates: a kill -9 between two of them redoes the rest from Kafka.

The updates handled after the last checkpoint live only in memory; their
``update.accepted`` audit events must not leave before the checkpoint that
covers them, and after the crash they are redone, so the global model is
bit-identical to the reference sum and every update is audited exactly once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from devstack.settings import StackSettings
from qflare.fl import weighted_average
from qflare.kafka import KafkaSettings
from qflare.protocol.control import AuditEvent
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    global_model,
    perturbed,
    rejections,
    round_results,
)
from tests.integration.services.harness import audit_events

EVERY = 3
EXAMPLES = [600, 50, 333, 17, 1000, 250]


@dataclass
class SparseCheckpoints(AggregatorProcess):
    """An aggregator that checkpoints every ``EVERY`` updates and never merely because time passed."""

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "QFLARE_AGGREGATOR_CHECKPOINT_EVERY_UPDATES": str(EVERY),
            "QFLARE_AGGREGATOR_CHECKPOINT_INTERVAL_S": "3600",
        }


async def _included(conn: psycopg.AsyncConnection[tuple[Any, ...]], job: str) -> int:
    cur = await conn.execute("SELECT count(*) FROM aggregator.included WHERE job_id = %s", (job,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def _accepted(events: list[AuditEvent], job: str) -> list[AuditEvent]:
    return [
        e
        for e in events
        if e.source == "aggregator" and e.event == "update.accepted" and e.detail.get("job_id") == job
    ]


async def _until(check: Any, what: str) -> None:
    for _ in range(1200):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_kill9_between_checkpoints_redoes_the_rest_once(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, unique: str, stack: StackSettings
) -> None:
    job = f"sparse-{unique}"
    proc = SparseCheckpoints(kafka, keys_dir, tmp_path / "aggregator.log", eval_examples=0)
    plane = ControlPlane(kafka, keys_dir)
    await plane.start()
    proc.start()
    accepted_metric = {"service": "aggregator", "type": "model_update"}
    try:
        devices = [await plane.device(f"c{i}-{unique}") for i in range(len(EXAMPLES))]
        weights = [perturbed(200 + i) for i in range(len(devices))]
        records = [
            d.update(job, 1, 0, w, n, loss=0.1 * i)
            for i, (d, w, n) in enumerate(zip(devices, weights, EXAMPLES, strict=True))
        ]
        await plane.start_job(job)
        await global_model(kafka, keys_dir, job, 0)
        ids = [d.device_id for d in devices]
        await plane.open_round(job, 1, 0, ids, deadline_s=300, min_updates=len(ids))
        topic = plane.topics.updates.name
        async with await psycopg.AsyncConnection.connect(stack.postgres_dsn, autocommit=True) as conn:
            for i in range(EVERY):
                await plane.send(topic, ids[i], *records[i])

            async def checkpointed() -> bool:
                return await _included(conn, job) == EVERY

            await _until(checkpointed, f"the first {EVERY} updates checkpointed")
            # Two more: handled (counted in memory), not yet checkpointed.
            for i in range(EVERY, EVERY + 2):
                await plane.send(topic, ids[i], *records[i])

            async def handled() -> bool:
                return proc.metric("qflare_accepted_messages_total", **accepted_metric) >= EVERY + 2

            await _until(handled, "the next two updates handled")
            assert await _included(conn, job) == EVERY, "a checkpoint came early: the kill lands nowhere"
            before = _accepted(
                await audit_events(kafka, keys_dir, lambda ev: len(_accepted(ev, job)) >= EVERY), job
            )
            assert sorted(e.subject or "" for e in before) == sorted(ids[:EVERY])

            proc.kill9()
            proc.start()
            await plane.send(topic, ids[0], *records[0])  # a device resending: refused as a replay
            await plane.send(topic, ids[-1], *records[-1])
            (done,) = [
                r
                for r in await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
                if r.job_id == job
            ]
            cur = await conn.execute(
                "SELECT count(*), count(DISTINCT device_id) FROM aggregator.included WHERE job_id = %s",
                (job,),
            )
            assert await cur.fetchone() == (len(ids), len(ids))
        await rejections(kafka, keys_dir, lambda found: "replay" in found)
        events = _accepted(
            await audit_events(kafka, keys_dir, lambda ev: len(_accepted(ev, job)) >= len(ids)), job
        )
        # Exactly once each: the two updates redone after the crash were not reported before it.
        assert sorted(e.subject or "" for e in events) == sorted(ids)
        assert len({e.ref_id for e in events}) == len(ids)

        assert done.status == "completed" and done.num_updates == len(ids)
        assert done.num_examples == sum(EXAMPLES)
        model = await global_model(kafka, keys_dir, job, 1)
        expected = weighted_average(list(zip(weights, EXAMPLES, strict=True)))
        for tensor, want in zip(model.tensors, expected, strict=True):
            assert tensor.array.tobytes() == want.tobytes(), tensor.name
        assert proc.starts == 2 and proc.alive
    finally:
        proc.stop()
        await plane.stop()
