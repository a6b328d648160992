"""The simulator's devices run the device's ``solve``: SCAFFOLD agrees across trainers; Ditto, FedPer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from qflare.fl import CONTROL, WEIGHTS, JobSpec, TrainConfig
from qflare.ml import init_weights
from qflare.sim import BatchedTrainer, ReferenceTrainer, SimFleet, Simulation, make_fleet
from qflare.sim.engine import personal_summary

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fleet() -> SimFleet:
    full = make_fleet("mnist", "iid", 6, seed=3)
    return replace(
        full,
        train_index=[idx[: 20 + 3 * i] for i, idx in enumerate(full.train_index)],
        val_index=[idx[:15] for idx in full.val_index],
    )


def _config(**extra: object) -> TrainConfig:
    base: dict[str, object] = {
        "model": "builtin:2nn",
        "dataset": "mnist",
        "seed": 0,
        "epochs": 1,
        "batch_size": 10,
        "lr": 0.05,
        "proximal_mu": 0.0,
        "evaluate": False,
        "evaluate_global": False,
        "train": True,
    }
    return TrainConfig(**{**base, **extra})


def test_batched_scaffold_agrees_with_the_devices_solve(fleet: SimFleet) -> None:
    """Two rounds (the second with the c_i each device kept): same weights, deltas and c_i."""
    config = _config(scaffold=True)
    x = init_weights("2nn", 1)
    rng = np.random.default_rng(1)
    c = [rng.normal(0, 0.01, w.shape).astype(np.float32) for w in x]
    batched, reference = BatchedTrainer(fleet, device="cpu"), ReferenceTrainer(fleet)
    for round_no, devices in ((1, [0, 1, 2]), (2, [1, 2, 4])):
        got = batched.train(round_no, devices, x, config, {CONTROL: c})
        want = reference.train(round_no, devices, x, config, {CONTROL: c})
        for d, g, w in zip(devices, got, want, strict=True):
            assert g.num_examples == w.num_examples
            assert g.metrics["local_steps"] == w.metrics["local_steps"]
            for a, b in zip(g.groups[WEIGHTS], w.groups[WEIGHTS], strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5)
            # dc = (x - y)/(K lr) - c magnifies the weights' float rounding by 1/(K lr) = 10 or so.
            for a, b in zip(g.groups[CONTROL], w.groups[CONTROL], strict=True):
                np.testing.assert_allclose(a, b, atol=2e-4)
            kept = reference.states[d].control
            assert kept is not None
            for a, b in zip(batched.controls[d], kept, strict=True):
                np.testing.assert_allclose(a, b, atol=2e-4)
        # The next round starts from what the first one produced.
        x = [np.asarray(w, np.float32) for w in want[0].groups[WEIGHTS]]


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
            "seed": 3,
        }
    )


@pytest.mark.parametrize("strategy", ["ditto", "fedper"])
def test_personalised_strategies_run_and_report_personal_accuracy(fleet: SimFleet, strategy: str) -> None:
    trainer = BatchedTrainer(fleet, device="cpu")  # falls back to the reference for personal models
    sim = Simulation(_job({"name": strategy}), fleet.ids, trainer)
    records = sim.run()
    assert [r.round for r in records] == [1, 2]
    for record in records:
        assert record.personal_accuracy_mean is not None and record.personal_accuracy_p10 is not None
        assert 0.0 <= record.personal_accuracy_p10 <= record.personal_accuracy_mean <= 1.0
        assert "personal_accuracy_p10" in record.to_json()
    assert trainer.reference is not None and trainer.reference.states  # state kept between rounds
    final = sim.final_personal()
    assert final is not None and final["personal_devices"] == len(fleet.ids)
    if strategy == "fedper":
        # Personal tensors never leave the device: the global output layer is still the initial one.
        start = init_weights("2nn", 3)
        np.testing.assert_array_equal(sim.weights[-1], start[-1])


def test_plain_strategies_report_no_personal_figures(fleet: SimFleet) -> None:
    sim = Simulation(_job({"name": "fedavg"}), fleet.ids, ReferenceTrainer(fleet))
    record = sim.round(1)
    assert record.personal_accuracy_mean is None and "personal_accuracy_mean" not in record.to_json()
    assert sim.final_personal() is None


def test_personal_summary_is_the_mean_and_the_tenth_percentile() -> None:
    values = [float(v) for v in range(11)]  # 0..10: the 10th percentile is 1
    assert personal_summary(values) == (5.0, 1.0)
    assert personal_summary([]) == (None, None)
