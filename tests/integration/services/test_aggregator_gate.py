"""The publication gate through the real aggregator: a model that wrecks accuracy is held, a good one
is promoted, and training goes on from the version that stayed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psycopg
import torch

from devstack.settings import StackSettings
from qflare.kafka import KafkaSettings
from qflare.ml import init_weights, load_dataset
from qflare.ml.train import train_local
from qflare.protocol.training import RoundComplete
from tests.integration.services.aggregator_harness import (
    JOB_CONFIG,
    AggregatorProcess,
    ControlPlane,
    SimDevice,
    global_model,
    round_results,
)
from tests.integration.services.harness import audit_events


def _trained() -> list[np.ndarray]:
    """Version 0 trained on 2,000 MNIST images for one epoch: well above chance."""
    torch.set_num_threads(1)
    data = load_dataset("mnist")
    start = init_weights("2nn", JOB_CONFIG["seed"])
    result = train_local("2nn", start, data.train_images[:2000], data.train_labels[:2000], 1, 10, 0.05, 0)
    return [np.asarray(w, dtype=np.float32) for w in result.weights]


async def test_the_gate_holds_a_wrecked_model_and_promotes_a_good_one(
    kafka: KafkaSettings,
    keys_dir: Path,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    unique: str,
    stack: StackSettings,
) -> None:
    job = f"job-{unique}"
    device = await plane.device(f"d-{unique}")
    await plane.start_job(job, gate_max_drop=0.02)
    await global_model(kafka, keys_dir, job, 0)
    good = _trained()
    wrecked = [np.zeros_like(w) for w in good]

    async def round_(number: int, version: int, weights: list[np.ndarray]) -> RoundComplete:
        await plane.open_round(job, number, version, [device.device_id])
        await _send(plane, device, job, number, version, weights)
        found = await round_results(
            kafka, keys_dir, lambda got: any(r.job_id == job and r.round == number for r in got)
        )
        return next(r for r in found if r.job_id == job and r.round == number)

    first = await round_(1, 0, good)  # from chance to well above it: promoted
    assert first.status == "completed" and first.model_version == 1
    assert first.metrics["gate_drop"] < 0 and first.metrics["base_accuracy"] < 0.3
    accuracy = first.metrics["test_accuracy"]
    assert accuracy > 0.6

    second = await round_(2, 1, wrecked)
    assert second.status == "held" and second.model_version == 1 and second.model_digest is None
    m = second.metrics
    assert m["base_accuracy"] == accuracy and m["test_accuracy"] == accuracy
    assert m["candidate_accuracy"] < accuracy - 0.02
    assert m["gate_drop"] == accuracy - m["candidate_accuracy"] and m["evaluated_version"] == 1
    events = await audit_events(kafka, keys_dir, lambda ev: any(e.event == "round.held" for e in ev))
    (held,) = [e for e in events if e.event == "round.held"]
    assert held.severity == "warning" and held.source == "aggregator" and held.subject == job
    assert held.detail["round"] == 2 and held.detail["model_version"] == 1
    assert held.detail["candidate_accuracy"] == m["candidate_accuracy"]
    assert held.detail["base_accuracy"] == accuracy and held.detail["gate_drop"] == m["gate_drop"]

    # Nothing was stored for the held candidate; the next round starts from version 1 again.
    third = await round_(3, 1, good)
    assert third.status == "completed" and third.model_version == 2
    assert third.metrics["base_accuracy"] == accuracy and abs(third.metrics["gate_drop"]) < 1e-9
    v2 = await global_model(kafka, keys_dir, job, 2)
    assert v2.round == 3 and v2.metadata["parent"] == 1
    async with await psycopg.AsyncConnection.connect(stack.postgres_dsn) as conn:
        cur = await conn.execute(
            "SELECT version, parent, round FROM aggregator.models WHERE job_id = %s ORDER BY version", (job,)
        )
        rows = await cur.fetchall()
        cur = await conn.execute(
            "SELECT status FROM aggregator.rounds WHERE job_id = %s ORDER BY round", (job,)
        )
        statuses = [r[0] for r in await cur.fetchall()]
    assert [tuple(r) for r in rows] == [(0, None, None), (1, 0, 1), (2, 1, 3)]
    assert statuses == ["completed", "held", "completed"]
    assert aggregator.alive


async def _send(
    plane: ControlPlane, device: SimDevice, job: str, round: int, version: int, weights: list[np.ndarray]
) -> None:
    records = device.update(job, round, version, weights, 100)
    await plane.send(plane.topics.updates.name, device.device_id, *records)
