"""The aggregator end to end against real Kafka and PostgreSQL: a job, a round, the new model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import psycopg
import pytest

from devstack.settings import StackSettings
from qflare.fl import FixedPoint
from qflare.kafka import KafkaSettings
from qflare.ml import init_weights, tensor_names
from qflare.protocol import wire
from tests.integration.services.aggregator_harness import (
    JOB_CONFIG,
    AggregatorProcess,
    ControlPlane,
    global_model,
    perturbed,
    round_results,
)


async def test_round_of_three_closes_with_the_weighted_mean(
    kafka: KafkaSettings,
    keys_dir: Path,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    unique: str,
    stack: StackSettings,
) -> None:
    job = f"job-{unique}"
    devices = [await plane.device(f"d{i}-{unique}") for i in range(3)]
    await plane.start_job(job)
    v0 = await global_model(kafka, keys_dir, job, 0)
    names = tensor_names("2nn")
    assert [t.name for t in v0.tensors] == names and v0.round is None
    for tensor, expected in zip(v0.tensors, init_weights("2nn", JOB_CONFIG["seed"]), strict=True):
        assert tensor.array.tobytes() == expected.tobytes()

    await plane.open_round(job, 1, 0, [d.device_id for d in devices], min_updates=2)
    weights = [perturbed(seed) for seed in range(3)]
    examples = [600, 300, 100]
    losses = [0.9, 0.6, 0.3]
    for device, w, n, loss in zip(devices, weights, examples, losses, strict=True):
        await plane.send(
            plane.topics.updates.name, device.device_id, *device.update(job, 1, 0, w, n, loss=loss)
        )

    (done,) = await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
    assert done.status == "completed" and done.round == 1 and done.model_version == 1
    assert done.num_updates == 3 and done.num_examples == 1000
    assert sorted(done.included) == sorted(d.device_id for d in devices)
    m = done.metrics
    assert m["participants"] == 3 and m["selected"] == 3 and m["bytes_in"] > 3 * 797_000
    assert m["duration_s"] >= 0
    assert m["train_loss"] == pytest.approx((0.9 * 600 + 0.6 * 300 + 0.3 * 100) / 1000)
    assert 0 <= m["test_accuracy"] <= 1 and m["test_loss"] > 0 and m["test_examples"] == 500

    v1 = await global_model(kafka, keys_dir, job, 1)
    assert v1.round == 1 and v1.metadata["parent"] == 0
    body = b"".join(bytes(p) for p in wire.pack_parts(v1.to_body()))
    assert hashlib.sha256(body).digest() == done.model_digest
    fmt = FixedPoint()
    for i, tensor in enumerate(v1.tensors):
        exact = (
            np.sum([w[i].astype(np.float64) * n for w, n in zip(weights, examples, strict=True)], axis=0)
            / 1000
        )
        error = np.abs(tensor.array.astype(np.float64) - exact)
        assert tensor.dtype == "<f4" and tensor.array.shape == exact.shape
        assert np.all(error <= fmt.error_bound(exact) + 1e-12), tensor.name

    # The model store holds both versions; the digest is over the stored bytes.
    async with await psycopg.AsyncConnection.connect(stack.postgres_dsn) as conn:
        cur = await conn.execute(
            "SELECT version, parent, round, digest, weights FROM aggregator.models WHERE job_id = %s "
            "ORDER BY version",
            (job,),
        )
        rows = await cur.fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(0, None, None), (1, 0, 1)]
    assert bytes(rows[1][4]) == body and bytes(rows[1][3]) == done.model_digest
    assert aggregator.alive
