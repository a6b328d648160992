"""The tabular example in process: numpy softmax regression on digits, and no torch anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from examples.tabular import make_model
from tests.examples import harness

APP = "examples.tabular.device:app"
ROOT = Path(__file__).resolve().parents[2]


def initial_model(tmp_path: Path) -> harness.Model:
    path = make_model.main(["-o", str(tmp_path / "tabular.safetensors"), "--seed", "2"])
    return dict(load_file(str(path)))


def test_the_initial_model_is_two_float32_tensors(tmp_path: Path) -> None:
    model = initial_model(tmp_path)
    assert {n: (w.shape, w.dtype) for n, w in model.items()} == {
        "linear.bias": ((10,), np.dtype("float32")),
        "linear.weight": ((10, 64), np.dtype("float32")),
    }


def test_three_rounds_of_fedavg_reach_the_bar_on_held_out_data(tmp_path: Path) -> None:
    cfg = harness.config(seed=4, epochs=2, batch_size=10, lr=0.5)
    sim = harness.simulate(APP, initial_model(tmp_path), cfg, tmp_path / "state", devices=3, rounds=3)
    assert sim.accuracies[0] < 0.3
    assert sim.accuracies[-1] >= 0.90, sim.accuracies
    for results in sim.results:
        for r in results:
            assert all(w.dtype == np.float32 for w in harness.weights_of(r, list(sim.model)))


def test_nothing_in_the_example_imports_torch(tmp_path: Path) -> None:
    """Write the model, train and evaluate a round, in a fresh interpreter: torch is never loaded."""
    script = f"""
import sys
from pathlib import Path
from safetensors.numpy import load_file
from examples.tabular import make_model
from tests.examples import harness
path = make_model.main(["-o", {str(tmp_path / "m.safetensors")!r}])
model = dict(load_file(str(path)))
cfg = harness.config(seed=0, epochs=1, batch_size=10, lr=0.5)
harness.simulate("examples.tabular.device:app", model, cfg, Path({str(tmp_path)!r}), devices=2, rounds=1)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded
print("no torch")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("no torch")
