"""The simulator's round loop: the scheduler's selection, FedAvg of the devices' training, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from qflare.fl import JobSpec
from qflare.fl.selection import select
from qflare.ml import init_weights
from qflare.ml.train import train_local
from qflare.sim import (
    BatchedTrainer,
    CentralEvaluation,
    ReferenceTrainer,
    SimFleet,
    Simulation,
    make_fleet,
    round_seed,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fleet() -> SimFleet:
    full = make_fleet("mnist", "iid", 6, seed=4)
    return replace(full, train_index=[idx[: 30 + 5 * i] for i, idx in enumerate(full.train_index)])


def _job(strategy: dict[str, object]) -> JobSpec:
    return JobSpec.parse(
        {
            "model": "builtin:2nn",
            "strategy": strategy,
            "rounds": 2,
            "fraction": 0.5,
            "min_clients": 2,
            "epochs": 1,
            "batch_size": 10,
            "lr": 0.05,
            "seed": 4,
        }
    )


def test_a_round_is_fedavg_of_the_selected_devices_trained_as_the_fleet_trains(fleet: SimFleet) -> None:
    job = _job({"name": "fedavg"})
    sim = Simulation(job, fleet.ids, ReferenceTrainer(fleet))
    chosen = select(list(fleet.ids), job, 1)
    assert chosen is not None and sim.selected(1) == chosen and len(chosen) == 3
    start = init_weights("2nn", job.seed)
    sim.round(1)
    expected = None
    total = 0
    for device in chosen:
        i = fleet.ids.index(device)
        trained = train_local(
            "2nn", start, fleet.images(i), fleet.labels(i), 1, 10, 0.05, round_seed(4, i, 1)
        )
        n = trained.num_examples
        scaled = [w.astype(np.float64) * n for w in trained.weights]
        expected = scaled if expected is None else [a + b for a, b in zip(expected, scaled, strict=True)]
        total += n
    assert expected is not None
    for got, want in zip(sim.weights, expected, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want / total, atol=1e-6)


@pytest.mark.parametrize("strategy", [{"name": "fedavg"}, {"name": "fedprox", "proximal_mu": 0.1}])
def test_batched_and_reference_runs_give_the_same_model_and_reruns_are_identical(
    fleet: SimFleet, strategy: dict[str, object]
) -> None:
    job = _job(strategy)
    evaluation = None
    runs = [
        Simulation(job, fleet.ids, ReferenceTrainer(fleet), evaluation),
        Simulation(job, fleet.ids, ReferenceTrainer(fleet), evaluation),
        Simulation(job, fleet.ids, BatchedTrainer(fleet, device="cpu"), evaluation),
    ]
    records = [run.run() for run in runs]
    assert [r.round for r in records[0]] == [1, 2]
    assert all(r.participants == 3 and r.failed == 0 for r in records[0])
    for a, b in zip(runs[0].weights, runs[1].weights, strict=True):
        assert np.array_equal(a, b)  # same seeds, same model, bit for bit
    worst = max(float(np.abs(a - b).max()) for a, b in zip(runs[0].weights, runs[2].weights, strict=True))
    assert worst < 1e-5
    assert records[0][1].train_loss == pytest.approx(records[2][1].train_loss, rel=1e-5)


def test_evaluation_on_a_torch_device_matches_the_aggregators(fleet: SimFleet) -> None:
    weights = init_weights("2nn", 9)
    cpu = CentralEvaluation(fleet.test_images, fleet.test_labels, examples=2000)
    tensors = CentralEvaluation(fleet.test_images, fleet.test_labels, examples=2000, device="cpu")
    loss, accuracy = cpu("2nn", weights)
    loss2, accuracy2 = tensors("2nn", weights)
    assert accuracy2 == accuracy and loss2 == pytest.approx(loss, rel=1e-6)


def test_the_simulated_round_size_is_what_selection_picks_from_a_full_fleet() -> None:
    from qflare.fl import JobSpec
    from qflare.fl.selection import fleet_round_size, select

    ids = [f"d{i:03d}" for i in range(100)]
    for devices, fraction in [(100, 0.1), (100, 0.01), (5, 0.1), (1, 0.5), (10, 1.0), (7, 0.3)]:
        size = fleet_round_size(devices, fraction)
        for min_clients in (min(2, devices), size):
            job = JobSpec(fraction=fraction, min_clients=min_clients)
            picked = select(ids[:devices], job, 1)
            assert picked is not None and len(picked) == size, (devices, fraction, min_clients)
    # Krum (f = 1) needs 5 updates: a 100-device fleet at C = 0.1 has rounds of 10, so it may start.
    krum = {"name": "krum", "num_byzantine": 1}
    from qflare.fl import build_strategy

    build_strategy(
        JobSpec.parse({"fraction": 0.1, "min_clients": fleet_round_size(100, 0.1), "strategy": krum})
    )
