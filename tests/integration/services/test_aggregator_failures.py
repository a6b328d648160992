"""Failed replies: a device that cannot train answers its round with a ``round_failure``.

The aggregator counts it as the device's answer (so the round need not wait for
its deadline), audits it with the device's error, reports it in the round's
metrics, and keeps it across a kill -9 like an update.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import psycopg

from devstack.settings import StackSettings
from edge.app import DeviceApp, Failure, TrainResult, TrainTask
from edge.training import train_and_send
from qflare.fl import JobSpec, build_strategy
from qflare.kafka import KafkaSettings
from qflare.ml import tensor_names
from tests.integration.services.aggregator_harness import (
    JOB_CONFIG,
    AggregatorProcess,
    ControlPlane,
    global_model,
    perturbed,
    rejections,
    round_results,
)
from tests.integration.services.harness import Fleet, audit_events

#: Far beyond any wait of these tests: a round that closes did so because everyone answered.
NEVER_S = 3600.0
ERROR = "ModuleNotFoundError: No module named 'mymodel'"


async def test_a_failed_reply_is_an_answer_audited_and_counted(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"job-{unique}"
    a, b, c = [await plane.device(f"{n}-{unique}") for n in "abc"]
    ids = [a.device_id, b.device_id, c.device_id]
    updates = plane.topics.updates.name
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)

    # Round 1: two updates and one failure, quorum two: it completes without the failed device.
    await plane.open_round(job, 1, 0, ids, deadline_s=NEVER_S, min_updates=2)
    for i, device in enumerate((a, b)):
        await plane.send(updates, device.device_id, *device.update(job, 1, 0, perturbed(i), 100))
    await plane.send(updates, c.device_id, c.failure(job, 1, 0, "ModuleNotFoundError", ERROR))
    (first,) = await round_results(kafka, keys_dir, lambda got: any(r.round == 1 for r in got))
    assert first.status == "completed" and first.model_version == 1
    assert sorted(first.included) == sorted([a.device_id, b.device_id]) and first.num_updates == 2
    assert first.metrics["failed_devices"] == 1 and first.metrics["participants"] == 2

    events = await audit_events(
        kafka, keys_dir, lambda ev: any(e.event == "update.failed" for e in ev if e.source == "aggregator")
    )
    (failed,) = [e for e in events if e.event == "update.failed" and e.source == "aggregator"]
    assert failed.subject == c.device_id and failed.reason == "ModuleNotFoundError"
    assert failed.detail["message"] == ERROR
    assert failed.detail["round"] == 1 and failed.detail["job_id"] == job

    # A second answer from the same device is a duplicate, whatever kind: one answer per device.
    await plane.open_round(job, 2, 1, ids, deadline_s=NEVER_S, min_updates=2)
    await plane.send(updates, c.device_id, c.failure(job, 2, 1, "ValueError", "no data"))
    await plane.send(updates, c.device_id, *c.update(job, 2, 1, perturbed(5), 100))
    await plane.send(updates, a.device_id, a.failure(job, 2, 1, "shape", "tensor fc1.weight"))
    # Round 2: one update, two failures, quorum two: everyone answered, so it misses its quorum now.
    await plane.send(updates, b.device_id, *b.update(job, 2, 1, perturbed(6), 100))
    results = await round_results(kafka, keys_dir, lambda got: any(r.round == 2 for r in got))
    second = next(r for r in results if r.round == 2)
    assert second.status == "quorum_not_met" and second.model_version == 1
    assert second.included == (b.device_id,) and second.metrics["failed_devices"] == 2
    await rejections(kafka, keys_dir, lambda found: "duplicate" in found)
    assert aggregator.alive


def _app(broken: bool) -> DeviceApp:
    """A numpy-only app whose train handler works, or raises as a user's code can."""
    app = DeviceApp()

    @app.train
    def train(task: TrainTask) -> TrainResult:
        if broken:
            raise FileNotFoundError("no training data under /data/site-3")
        return TrainResult([w + np.float32(0.001) for w in task.weights], 20, {"loss": 0.4})

    return app


async def test_a_device_whose_handler_raises_sends_its_failed_reply(
    kafka: KafkaSettings,
    keys_dir: Path,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    job = f"job-{unique}"
    devices = []
    for name, broken in (("good1", False), ("good2", False), ("broken", True)):
        device = fleet.add(f"{name}-{unique}", None)
        device.app = _app(broken)
        await plane.device(device.device_id, key=device.key)
        devices.append(device)
    ids = [d.device_id for d in devices]
    await plane.start_job(job)
    config = build_strategy(JobSpec.parse({**JOB_CONFIG, "rounds": 1})).train_config(1)
    task = await plane.open_round(
        job, 1, 0, ids, deadline_s=NEVER_S, min_updates=2, config=config.to_config()
    )
    model = await global_model(kafka, keys_dir, job, 0)
    weights = [t.array.copy() for t in model.tensors]
    outcomes = [await train_and_send(d, task, weights, tuple(tensor_names("2nn"))) for d in devices]
    assert [type(o) for o in outcomes] == [TrainResult, TrainResult, Failure]
    assert devices[2].failures == 1

    (first,) = await round_results(kafka, keys_dir, lambda got: any(r.round == 1 for r in got))
    assert first.status == "completed" and sorted(first.included) == sorted(ids[:2])
    assert first.metrics["failed_devices"] == 1
    events = await audit_events(kafka, keys_dir, lambda ev: any(e.event == "update.failed" for e in ev))
    (failed,) = [e for e in events if e.event == "update.failed"]
    assert failed.subject == ids[2] and failed.reason == "FileNotFoundError"
    assert failed.detail["message"] == "no training data under /data/site-3"


async def test_a_failed_reply_survives_a_kill9(
    kafka: KafkaSettings,
    keys_dir: Path,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    unique: str,
    stack: StackSettings,
) -> None:
    job = f"job-{unique}"
    a, b, c = [await plane.device(f"{n}-{unique}") for n in "abc"]
    ids = [a.device_id, b.device_id, c.device_id]
    updates = plane.topics.updates.name
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)
    await plane.open_round(job, 1, 0, ids, deadline_s=NEVER_S, min_updates=2)
    await plane.send(updates, c.device_id, c.failure(job, 1, 0, "RuntimeError", "CUDA out of memory"))
    async with await psycopg.AsyncConnection.connect(stack.postgres_dsn, autocommit=True) as conn:
        for _ in range(400):  # until the failure is in the round's checkpoint
            cur = await conn.execute(
                "SELECT count(*) FROM aggregator.included WHERE job_id = %s AND failure IS NOT NULL", (job,)
            )
            if (await cur.fetchone() or (0,))[0]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the failed reply never reached the round's checkpoint")
    aggregator.kill9()
    aggregator.start()
    # The restarted aggregator knows c answered: the two updates close the round at once.
    for i, device in enumerate((a, b)):
        await plane.send(updates, device.device_id, *device.update(job, 1, 0, perturbed(i), 100))
    (first,) = await round_results(kafka, keys_dir, lambda got: any(r.round == 1 for r in got))
    assert first.status == "completed" and first.model_version == 1
    assert sorted(first.included) == sorted([a.device_id, b.device_id])
    assert first.metrics["failed_devices"] == 1
