"""The personal example in process: heads stay on the devices, bodies are federated, and it pays off."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from examples.personal import make_model
from examples.personal.model import PERSONAL
from examples.personal.state import HEAD_FILE
from tests.examples import harness

APP = "examples.personal.device:app"


@pytest.fixture(autouse=True)
def small(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("QFLARE_PERSONAL_EXAMPLES_PER_DEVICE", "1000")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_personal_heads_never_leave_the_devices_and_personalised_accuracy_reaches_the_bar(
    tmp_path: Path,
) -> None:
    initial = dict(load_file(str(make_model.main(["-o", str(tmp_path / "p.safetensors"), "--seed", "5"]))))
    names = list(initial)
    cfg = harness.config(seed=6, epochs=2, batch_size=10, lr=0.1)
    root = tmp_path / "state"
    sim = harness.simulate(APP, initial, cfg, root, devices=3, rounds=3)

    for sent, results in zip(sim.sent, sim.results, strict=True):
        for r in results:
            back = dict(zip(names, harness.weights_of(r, names), strict=True))
            for n in names:
                # The personal tensors come back bit for bit as sent; the body was trained.
                assert np.array_equal(back[n], sent[n]) == (n in PERSONAL), n
    # So the federation's head is still the imported one, exactly.
    for n in PERSONAL:
        assert sim.model[n].tobytes() == initial[n].tobytes()

    # Each device kept its own head, trained on its own few classes (alpha 0.1).
    heads = [load_file(str(ctx.state_dir / HEAD_FILE)) for ctx in sim.ctxs]
    assert all(set(h) == set(PERSONAL) for h in heads)
    assert not np.array_equal(heads[0]["head.weight"], heads[1]["head.weight"])
    # The personalised model (global body + own head) on each device's held-out data.
    assert sim.accuracies[-1] >= 0.80, sim.accuracies
    # The same global model with the global head, as a device with no saved head would use it.
    fresh = [harness.context(tmp_path / "fresh", c.partition, c.num_partitions) for c in sim.ctxs]
    global_head = harness.federated_accuracy(sim.app, 4, sim.model, cfg, fresh)
    assert global_head < sim.accuracies[-1] - 0.1, (global_head, sim.accuracies)


def test_the_head_lives_in_the_state_directory_alone(tmp_path: Path) -> None:
    """A restarted device (same state directory, nothing in memory) evaluates with the head it saved."""
    initial = dict(load_file(str(make_model.main(["-o", str(tmp_path / "p.safetensors")]))))
    cfg = harness.config(seed=7, epochs=1, batch_size=20, lr=0.05)
    sim = harness.simulate(APP, initial, cfg, tmp_path / "state", devices=2, rounds=1)
    before = harness.evaluate(sim.app, 2, sim.model, cfg, sim.ctxs[0])
    moved = tmp_path / "elsewhere"
    shutil.copytree(sim.ctxs[0].state_dir, moved / sim.ctxs[0].device_id)
    shutil.rmtree(sim.ctxs[0].state_dir)
    ctx = harness.context(moved, 0, 2)
    after = harness.evaluate(sim.app, 2, sim.model, cfg, ctx)
    assert (after.loss, after.metrics) == (before.loss, before.metrics)
    # Without it, the device is back to the global head.
    gone = harness.evaluate(sim.app, 2, sim.model, cfg, harness.context(tmp_path / "empty", 0, 2))
    assert gone.metrics["accuracy"] < before.metrics["accuracy"]
