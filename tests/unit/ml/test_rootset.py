"""FLTrust's root set: fixed, nested, held out from evaluation; the server's update trusts honest devices."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError, SchemaError
from qflare.fl import JobSpec, Update, build_strategy
from qflare.fl.spec import WEIGHTS
from qflare.fl.strategies.fltrust import FLTrust
from qflare.ml import Dataset, init_weights
from qflare.ml.rootset import evaluation_indices, root_indices, root_set, root_update
from qflare.ml.train import train_local


def test_the_root_set_is_fixed_nested_and_held_out_from_evaluation() -> None:
    root = root_indices(10_000)
    assert len(root) == 100 and np.array_equal(root, root_indices(10_000))
    assert set(root_indices(10_000, 30)) <= set(root)
    rest = evaluation_indices(10_000)
    assert len(rest) == 9_900 and not set(rest) & set(root)
    with pytest.raises(ConfigError) as info:
        root_indices(50, 100)
    assert info.value.field == "root_size"


def test_the_server_update_trains_on_the_root_set(mnist: Dataset) -> None:
    images, labels = root_set(mnist)
    assert images.shape == (100, 28, 28) and len(set(labels.tolist())) == 10
    start = init_weights("2nn", 0)
    delta = root_update("2nn", "mnist", start, epochs=1, batch_size=10, lr=0.05, seed=3)
    again = root_update("2nn", "mnist", start, epochs=1, batch_size=10, lr=0.05, seed=3)
    assert [d.shape for d in delta] == [w.shape for w in start]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(delta, again, strict=True))
    assert float(np.abs(delta[0]).max()) > 0


def test_fltrust_gives_a_sign_flipped_device_no_trust(mnist: Dataset) -> None:
    job = JobSpec.parse({"min_clients": 4, "strategy": {"name": "fltrust"}, "lr": 0.05})
    strategy = build_strategy(job)
    assert isinstance(strategy, FLTrust)
    start = init_weights("2nn", 0)
    updates = []
    for k in range(3):
        part = slice(300 * k, 300 * (k + 1))
        trained = train_local(
            "2nn", start, mnist.train_images[part], mnist.train_labels[part], 1, 10, 0.05, k
        )
        updates.append(Update(f"d{k}", {WEIGHTS: trained.weights}, 300))
    flipped = [
        (w0 - 5 * (w - w0)).astype(np.float32) for w, w0 in zip(updates[0].weights, start, strict=True)
    ]
    updates.append(Update("d3", {WEIGHTS: flipped}, 300))
    scores = strategy.scores(strategy.initial_state(), updates, start)
    assert scores["d3"]["trust"] == 0.0
    assert all(scores[f"d{k}"]["trust"] > 0.3 for k in range(3)), scores
    new, _ = strategy.aggregate(strategy.initial_state(), updates, start)
    assert [w.shape for w in new] == [w.shape for w in start]


def test_fltrust_root_epochs_sets_how_long_the_server_trains() -> None:
    start = init_weights("2nn", 0)

    def server_norm(strategy: dict[str, object]) -> float:
        job = JobSpec.parse({"min_clients": 1, "strategy": strategy, "lr": 0.05, "batch_size": 50})
        fltrust = build_strategy(job)
        assert isinstance(fltrust, FLTrust)
        return float(np.sqrt(sum(np.dot(d, d) for d in fltrust.server_delta(start, 1))))

    default = server_norm({"name": "fltrust"})  # the job's 1 epoch: 2 steps of 50 images
    longer = server_norm({"name": "fltrust", "root_epochs": 6})  # 12 steps, as a device of 600
    assert longer > 2 * default
    with pytest.raises(SchemaError) as info:
        JobSpec.parse({"strategy": {"name": "fltrust", "root_epochs": 0}})
    assert "root_epochs" in str(info.value.field), info.value
