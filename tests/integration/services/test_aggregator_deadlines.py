"""Deadlines: a round closes on time with a quorum, fails without one, and a retry reuses the version."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devstack.settings import StackSettings
from qflare.kafka import KafkaSettings
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    global_model,
    perturbed,
    rejections,
    round_results,
)


@pytest.fixture
def aggregator(kafka: KafkaSettings, keys_dir: Path, tmp_path: Path) -> Iterator[AggregatorProcess]:
    proc = AggregatorProcess(kafka, keys_dir, tmp_path / "aggregator.log", eval_examples=0)
    proc.start()
    yield proc
    proc.stop()


async def test_deadline_with_and_without_quorum_then_retry(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"job-{unique}"
    a, b, c = [await plane.device(f"{n}-{unique}") for n in "abc"]
    ids = [a.device_id, b.device_id, c.device_id]
    updates = plane.topics.updates.name
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)

    # Round 1: two of three answer, quorum two: it closes at the deadline without the straggler.
    task = await plane.open_round(job, 1, 0, ids, deadline_s=4, min_updates=2)
    for i, device in enumerate((a, b)):
        await plane.send(updates, device.device_id, *device.update(job, 1, 0, perturbed(i), 100 + i))
    (first,) = await round_results(kafka, keys_dir, lambda got: any(r.round == 1 for r in got))
    closed_ms = time.time() * 1000
    assert first.status == "completed" and first.model_version == 1
    assert sorted(first.included) == sorted([a.device_id, b.device_id]) and first.num_examples == 201
    assert task.deadline_ms - 500 <= closed_ms
    assert first.metrics["participants"] == 2 and first.metrics["selected"] == 3
    assert "test_accuracy" not in first.metrics  # evaluation is off in this test
    # The straggler is too late: its round is closed.
    await plane.send(updates, c.device_id, *c.update(job, 1, 0, perturbed(2), 100))
    await rejections(kafka, keys_dir, lambda found: "wrong_round" in found)

    # Round 2: one answer, quorum two: quorum_not_met, and the version stays 1.
    await plane.open_round(job, 2, 1, ids, deadline_s=3, min_updates=2)
    await plane.send(updates, a.device_id, *a.update(job, 2, 1, perturbed(3), 100))
    results = await round_results(kafka, keys_dir, lambda got: any(r.round == 2 for r in got))
    second = next(r for r in results if r.round == 2)
    assert second.status == "quorum_not_met" and second.model_version == 1
    assert second.model_digest is None and second.num_updates == 1

    # Round 3 retries on the same version; everyone answers, so it closes before its deadline.
    await plane.open_round(job, 3, 1, ids, deadline_s=60, min_updates=2)
    for i, device in enumerate((a, b, c)):
        await plane.send(updates, device.device_id, *device.update(job, 3, 1, perturbed(10 + i), 100))
    results = await round_results(kafka, keys_dir, lambda got: any(r.round == 3 for r in got))
    third = next(r for r in results if r.round == 3)
    assert third.status == "completed" and third.model_version == 2 and third.num_updates == 3
    assert third.metrics["duration_s"] < 30
    v2 = await global_model(kafka, keys_dir, job, 2)
    assert v2.round == 3 and v2.metadata["parent"] == 1
    assert aggregator.alive


async def test_round_overdue_while_down_is_settled_before_the_scheduler_retry(
    kafka: KafkaSettings,
    keys_dir: Path,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    unique: str,
    stack: StackSettings,
) -> None:
    job = f"job-{unique}"
    a, b = [await plane.device(f"{n}-{unique}") for n in "ab"]
    ids = [a.device_id, b.device_id]
    updates = plane.topics.updates.name
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)
    await plane.open_round(job, 1, 0, ids, deadline_s=2, min_updates=2)
    await plane.send(updates, a.device_id, *a.update(job, 1, 0, perturbed(0), 100))
    async with await psycopg.AsyncConnection.connect(stack.postgres_dsn, autocommit=True) as conn:
        for _ in range(200):  # until a's update is in the round's checkpoint
            cur = await conn.execute("SELECT count(*) FROM aggregator.included WHERE job_id = %s", (job,))
            if (await cur.fetchone() or (0,))[0]:
                break
            await asyncio.sleep(0.05)
    aggregator.kill9()
    await asyncio.sleep(2.5)
    # The scheduler heard nothing past the deadline and retries with the next round number.
    await plane.open_round(job, 2, 0, ids, deadline_s=60, min_updates=2)
    aggregator.start()
    for i, device in enumerate((a, b)):
        await plane.send(updates, device.device_id, *device.update(job, 2, 0, perturbed(i + 5), 100))
    results = await round_results(kafka, keys_dir, lambda got: {1, 2} <= {r.round for r in got})
    by_round = {r.round: r for r in results}
    assert by_round[1].status == "quorum_not_met" and by_round[1].included == (a.device_id,)
    assert by_round[2].status == "completed" and by_round[2].model_version == 1
