"""The vision example in process: its CNN learns Fashion-MNIST over three FedAvg rounds on a subset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.vision import make_model
from tests.examples import harness

APP = "examples.vision.device:app"


@pytest.fixture(autouse=True)
def small(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A subset, on one thread: the machine is shared.
    monkeypatch.setenv("QFLARE_VISION_EXAMPLES_PER_DEVICE", "1500")
    monkeypatch.setenv("QFLARE_VISION_ALPHA", "1.0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def initial_model(tmp_path: Path) -> harness.Model:
    """What `qflare models import` reads from make_model's file: the state_dict's tensors, in order."""
    path = make_model.main(["-o", str(tmp_path / "vision.pt"), "--seed", "1"])
    state = torch.load(path, weights_only=True)
    return {name: t.numpy() for name, t in state.items()}


def test_the_initial_model_is_a_float32_state_dict_the_store_accepts(tmp_path: Path) -> None:
    model = initial_model(tmp_path)
    names = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    names += ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert list(model) == names
    assert all(w.dtype == np.float32 for w in model.values())
    assert sum(w.size for w in model.values()) == 114_314


def test_three_rounds_of_fedavg_reach_the_bar_on_held_out_data(tmp_path: Path) -> None:
    cfg = harness.config(seed=4, epochs=1, batch_size=10, lr=0.1)
    initial = initial_model(tmp_path)
    sim = harness.simulate(APP, initial, cfg, tmp_path / "state", devices=3, rounds=3)
    # Version 0 guesses; three rounds of 3 devices x 1,350 training examples learn the classes.
    assert sim.accuracies[0] < 0.3
    assert sim.accuracies[-1] >= 0.70, sim.accuracies
    # The devices shared out 4,500 examples and kept about 10 % of each share back.
    sizes = [r.num_examples for r in sim.results[0]]
    assert 0.88 * 4500 <= sum(sizes) <= 0.9 * 4500 + 3, sizes
    for results in sim.results:
        for r in results:
            assert np.isfinite(r.metrics["loss"])
    # The app never wrote into the global model it was given.
    assert all(np.array_equal(initial[n], sim.sent[0][n]) for n in initial)
