"""Batched training across devices equals training them one by one (``train_local``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from qflare.fl import TrainConfig
from qflare.ml import init_weights
from qflare.sim import BatchedTrainer, ReferenceTrainer, SimFleet, make_fleet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fleet() -> SimFleet:
    full = make_fleet("mnist", "iid", 100, seed=7)
    # Unequal shards: a short last batch, different step counts, one device smaller than a batch.
    sizes = [40, 53, 27, 8]
    return replace(full, train_index=[full.train_index[i][:n] for i, n in enumerate(sizes)])


def _config(batch_size: int, proximal_mu: float = 0.0, epochs: int = 2) -> TrainConfig:
    return TrainConfig(
        model="builtin:2nn",
        dataset="mnist",
        seed=0,
        epochs=epochs,
        batch_size=batch_size,
        lr=0.05,
        proximal_mu=proximal_mu,
        evaluate=False,
        evaluate_global=False,
        train=True,
    )


@pytest.mark.parametrize(("batch_size", "mu"), [(10, 0.0), (10, 0.5), (0, 0.0)])
def test_batched_devices_match_the_reference_one_by_one(fleet: SimFleet, batch_size: int, mu: float) -> None:
    weights = init_weights("2nn", 3)
    config = _config(batch_size, mu)
    devices = [0, 1, 2, 3]
    reference = ReferenceTrainer(fleet).train(5, devices, weights, config, {})
    batched = BatchedTrainer(fleet, device="cpu").train(5, devices, weights, config, {})
    worst = 0.0
    for ref, got in zip(reference, batched, strict=True):
        assert got.num_examples == ref.num_examples
        assert got.metrics["local_steps"] == ref.metrics["local_steps"]
        assert got.metrics["loss"] == pytest.approx(ref.metrics["loss"], rel=1e-5)
        for a, b in zip(ref.groups["weights"], got.groups["weights"], strict=True):
            assert b.dtype == np.float32 and a.shape == b.shape
            worst = max(worst, float(np.abs(a - b).max()))
    print(f"max |batched - reference| = {worst:.3g}")
    assert worst < 1e-5
    # Training moved the weights: the comparison is not of two untouched copies.
    assert float(np.abs(reference[0].groups["weights"][0] - weights[0]).max()) > 1e-4


def test_the_steps_follow_each_devices_own_count(fleet: SimFleet) -> None:
    results = BatchedTrainer(fleet, device="cpu").train(
        1, [0, 1, 2, 3], init_weights("2nn", 0), _config(10, epochs=1), {}
    )
    assert [r.metrics["local_steps"] for r in results] == [4, 6, 3, 1]
    assert [r.num_examples for r in results] == [40, 53, 27, 8]
