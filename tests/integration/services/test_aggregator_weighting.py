"""The server owns the weights, through the real aggregator: declared sizes, the cap, equal weights,
liars and suspended devices refused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.fl import FixedPoint
from qflare.kafka import KafkaSettings
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


def assert_weighted_mean(
    model: GlobalModel, weights: Sequence[Sequence[NDArray[Any]]], factors: Sequence[int]
) -> None:
    """The model is Σ factor·w / Σ factor, within the fixed point's error bound."""
    fmt, total = FixedPoint(), sum(factors)
    for i, tensor in enumerate(model.tensors):
        exact = np.sum([w[i].astype(np.float64) * n for w, n in zip(weights, factors, strict=True)], axis=0)
        exact /= total
        error = np.abs(tensor.array.astype(np.float64) - exact)
        assert np.all(error <= fmt.error_bound(exact) + 1e-12), tensor.name


async def _send(plane: ControlPlane, device: SimDevice, job: str, weights: Any, claimed: int) -> None:
    await plane.send(plane.topics.updates.name, device.device_id, *device.update(job, 1, 0, weights, claimed))


async def test_a_liar_and_a_suspended_device_are_refused_and_the_model_is_the_honest_aggregate(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"job-{unique}"
    a = await plane.device(f"a-{unique}", declared=600)
    b = await plane.device(f"b-{unique}", declared=300)
    liar = await plane.device(f"liar-{unique}", declared=100)
    held = await plane.device(f"sus-{unique}", declared=300)
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)
    ids = [a.device_id, b.device_id, liar.device_id, held.device_id]
    await plane.open_round(job, 1, 0, ids, min_updates=2, deadline_s=6)
    # Suspended after it was selected: its update is refused all the same.
    await plane.device(held.device_id, "suspended", key=held.key, declared=300)
    weights = [perturbed(seed) for seed in range(4)]
    await _send(plane, liar, job, weights[2], 134_000_000)  # the liar
    await _send(plane, held, job, weights[3], 300)
    await _send(plane, a, job, weights[0], 600)
    await _send(plane, b, job, weights[1], 300)

    (done,) = await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
    assert done.status == "completed" and sorted(done.included) == sorted([a.device_id, b.device_id])
    assert done.num_examples == 900 and done.metrics["claimed_examples"] == 900
    # (A suspended device's key may be out of the key ring, so its refusal is not always counted in
    # the round it names; it is audited either way.)
    assert done.metrics["rejected_over_claim"] == 1
    assert_weighted_mean(await global_model(kafka, keys_dir, job, 1), weights[:2], [600, 300])

    found = await rejections(kafka, keys_dir, lambda r: "over_claim" in r and "suspended" in r)
    (lie,) = found["over_claim"]
    assert lie.subject == liar.device_id and lie.detail["field"] == "body.num_examples"
    assert lie.detail["job_id"] == job and lie.detail["round"] == 1
    (refused,) = found["suspended"]
    assert refused.subject == held.device_id and refused.detail["field"] == "sender"
    assert aggregator.alive


async def test_a_refused_liar_is_its_answer_so_the_round_closes_without_its_deadline(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"job-{unique}"
    honest = [await plane.device(f"h{i}-{unique}", declared=100) for i in range(2)]
    liar = await plane.device(f"liar-{unique}", declared=100)
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)
    ids = [d.device_id for d in (*honest, liar)]
    # A deadline far beyond the test's wait: the round closes only because everyone answered.
    await plane.open_round(job, 1, 0, ids, min_updates=2, deadline_s=3600)
    weights = [perturbed(seed) for seed in range(3)]
    await _send(plane, liar, job, weights[2], 101)
    for device, w in zip(honest, weights, strict=False):
        await _send(plane, device, job, w, 100)

    (done,) = await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
    assert done.status == "completed" and sorted(done.included) == sorted(d.device_id for d in honest)
    assert done.metrics["failed_devices"] == 1 and done.metrics["rejected_over_claim"] == 1


async def test_a_huge_approved_size_weighs_at_most_k_times_the_median(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"job-{unique}"
    small = [await plane.device(f"s{i}-{unique}", declared=100) for i in range(2)]
    big = await plane.device(f"big-{unique}", declared=1_000_000)
    await plane.start_job(job, weight_cap=3.0)
    await global_model(kafka, keys_dir, job, 0)
    devices = [*small, big]
    await plane.open_round(job, 1, 0, [d.device_id for d in devices], min_updates=3)
    weights = [perturbed(seed) for seed in range(3)]
    for device, w, claimed in zip(devices, weights, [100, 80, 1_000_000], strict=True):
        await _send(plane, device, job, w, claimed)

    (done,) = await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
    # median declared size 100, cap 3 × 100: the big device weighs 300, not a million
    assert done.status == "completed" and done.num_examples == 100 + 80 + 300
    assert done.metrics["claimed_examples"] == 100 + 80 + 1_000_000
    assert_weighted_mean(await global_model(kafka, keys_dir, job, 1), weights, [100, 80, 300])


async def test_equal_weighting_gives_every_update_the_same_weight(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"job-{unique}"
    devices = [await plane.device(f"d{i}-{unique}", declared=n) for i, n in enumerate((600, 300, 100))]
    undeclared = await plane.device(f"u-{unique}", declared=None)  # no declaration needed for 1
    await plane.start_job(job, weighting="equal")
    await global_model(kafka, keys_dir, job, 0)
    everyone = [*devices, undeclared]
    await plane.open_round(job, 1, 0, [d.device_id for d in everyone], min_updates=4)
    weights = [perturbed(seed) for seed in range(4)]
    for device, w, claimed in zip(everyone, weights, [600, 300, 100, 5000], strict=True):
        await _send(plane, device, job, w, claimed)

    (done,) = await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
    assert done.status == "completed" and done.num_examples == 4
    assert done.metrics["claimed_examples"] == 6000
    assert_weighted_mean(await global_model(kafka, keys_dir, job, 1), weights, [1, 1, 1, 1])
