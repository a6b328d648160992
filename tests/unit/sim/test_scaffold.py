"""SCAFFOLD's device side in the batched trainer: corrected SGD and the control-variate update."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qflare.fl import CONTROL, WEIGHTS, NDArrays, TrainConfig
from qflare.ml import init_weights
from qflare.ml.data import to_float
from qflare.ml.models import build_model, get_weights
from qflare.sim import BatchedTrainer, SimFleet, make_fleet, round_seed

torch.set_num_threads(1)
LR = 0.05


@pytest.fixture(scope="module")
def fleet() -> SimFleet:
    full = make_fleet("mnist", "iid", 50, seed=2)
    return replace(full, train_index=[idx[: 20 + 7 * i] for i, idx in enumerate(full.train_index)])


def _by_hand(
    fleet: SimFleet, index: int, x: NDArrays, correction: NDArrays, seed: int
) -> tuple[NDArrays, int]:
    """Plain per-device SGD with the gradient corrected by ``c - c_i``, batch 10, one epoch."""
    model = build_model("2nn", weights=x)
    images = torch.from_numpy(to_float(fleet.images(index)))
    labels = torch.from_numpy(fleet.labels(index))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    steps = 0
    for start in range(0, len(labels), 10):
        idx = order[start : start + 10]
        model.zero_grad()
        F.cross_entropy(model(images[idx]), labels[idx]).backward()  # type: ignore[no-untyped-call]
        with torch.no_grad():
            for p, c in zip(model.parameters(), correction, strict=True):
                assert p.grad is not None
                p.sub_(LR * (p.grad + torch.from_numpy(c)))
        steps += 1
    return get_weights(model), steps


def test_corrected_sgd_and_the_new_control_variates(fleet: SimFleet) -> None:
    x = init_weights("2nn", 5)
    rng = np.random.default_rng(0)
    c = [rng.normal(0, 0.01, w.shape).astype(np.float32) for w in x]
    trainer = BatchedTrainer(fleet, device="cpu")
    old_c1 = [rng.normal(0, 0.01, w.shape).astype(np.float32) for w in x]
    trainer.controls[1] = old_c1
    config = TrainConfig(
        model="builtin:2nn",
        dataset="mnist",
        seed=0,
        epochs=1,
        batch_size=10,
        lr=LR,
        proximal_mu=0.0,
        evaluate=False,
        evaluate_global=False,
        train=True,
        scaffold=True,
    )
    results = trainer.train(3, [0, 1, 2], x, config, {CONTROL: c})
    for d, result in zip([0, 1, 2], results, strict=True):
        c_i = old_c1 if d == 1 else [np.zeros_like(w) for w in x]
        correction = [a - b for a, b in zip(c, c_i, strict=True)]
        want, steps = _by_hand(fleet, d, x, correction, round_seed(2, d, 3))
        assert result.metrics["local_steps"] == steps
        for got, exp in zip(result.groups[WEIGHTS], want, strict=True):
            np.testing.assert_allclose(got, exp, atol=1e-5)
        # Option II: delta = c_i+ - c_i = (x - y_i) / (K lr) - c, and the device keeps c_i+.
        for k, delta in enumerate(result.groups[CONTROL]):
            expected = (x[k].astype(np.float64) - result.groups[WEIGHTS][k]) / (steps * LR) - c[k]
            np.testing.assert_allclose(delta, expected, atol=1e-5)
            np.testing.assert_allclose(trainer.controls[d][k], c_i[k] + delta, atol=1e-7)
