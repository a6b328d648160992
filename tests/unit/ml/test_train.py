"""Local training: it learns, it is reproducible, FedProx pulls towards the anchor, inputs are checked."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError, DatasetError
from qflare.fl import NDArrays
from qflare.ml import Dataset, init_weights, to_float
from qflare.ml.train import evaluate, train_local


def test_2nn_learns_mnist_in_one_local_epoch(mnist: Dataset) -> None:
    images, labels = mnist.train_images[:2000], mnist.train_labels[:2000]
    test_x, test_y = mnist.test_images[:1000], mnist.test_labels[:1000]
    start = init_weights("2nn", 0)
    _, before = evaluate("2nn", start, test_x, test_y)
    result = train_local("2nn", start, images, labels, epochs=1, batch_size=10, lr=0.1, seed=0)
    loss, accuracy = evaluate("2nn", result.weights, test_x, test_y)
    assert before < 0.3
    assert accuracy > 0.8
    assert result.num_examples == 2000 and 0 < result.loss < 2.0 and loss < 1.0
    assert [w.shape for w in result.weights] == [w.shape for w in start]
    assert all(w.dtype == np.float32 for w in result.weights)


def test_training_is_reproducible_and_uint8_equals_float(mnist: Dataset) -> None:
    x, y = mnist.train_images[:200], mnist.train_labels[:200]
    start = init_weights("2nn", 1)
    a = train_local("2nn", start, x, y, 2, 16, 0.05, seed=7)
    b = train_local("2nn", start, to_float(x), y, 2, 16, 0.05, seed=7)
    c = train_local("2nn", start, x, y, 2, 16, 0.05, seed=8)
    assert all(p.tobytes() == q.tobytes() for p, q in zip(a.weights, b.weights, strict=True))
    assert a.weights[0].tobytes() != c.weights[0].tobytes()
    assert start[0].tobytes() == init_weights("2nn", 1)[0].tobytes()  # the input was not modified


def test_cnn_trains_a_few_steps(mnist: Dataset) -> None:
    start = init_weights("cnn", 0)
    result = train_local("cnn", start, mnist.train_images[:40], mnist.train_labels[:40], 1, 10, 0.05, 0)
    assert result.num_examples == 40 and np.isfinite(result.loss)
    assert not np.array_equal(result.weights[4], start[4])


def _distance(a: NDArrays, b: NDArrays) -> float:
    return float(sum(np.sum((x - y) ** 2) for x, y in zip(a, b, strict=True)))


def test_proximal_term_keeps_weights_near_the_global_model(mnist: Dataset) -> None:
    x, y = mnist.train_images[:300], mnist.train_labels[:300]
    start = init_weights("2nn", 2)
    plain = train_local("2nn", start, x, y, 3, 10, 0.05, seed=1)
    prox = train_local("2nn", start, x, y, 3, 10, 0.05, seed=1, proximal_mu=1.0)
    assert _distance(prox.weights, start) < 0.5 * _distance(plain.weights, start)


def test_full_batch_is_one_step_per_epoch(mnist: Dataset) -> None:
    x, y = mnist.train_images[:64], mnist.train_labels[:64]
    start = init_weights("2nn", 3)
    full = train_local("2nn", start, x, y, 1, 0, 0.1, seed=0)
    same = train_local("2nn", start, x, y, 1, 64, 0.1, seed=5)  # order is irrelevant for one full batch
    for p, q in zip(full.weights, same.weights, strict=True):
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-6)


def test_bad_arguments_are_typed_errors() -> None:
    x, y = np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int64)
    w = init_weights("2nn", 0)
    cases: list[tuple[dict[str, float], str]] = [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"proximal_mu": -1.0}, "proximal_mu"),
    ]
    for kwargs, field in cases:
        args: dict[str, float] = {"epochs": 1, "batch_size": 2, "lr": 0.1, "seed": 0, **kwargs}
        with pytest.raises(ConfigError) as info:
            train_local("2nn", w, x, y, **args)  # type: ignore[arg-type]
        assert info.value.field == field
    with pytest.raises(DatasetError):
        train_local("2nn", w, x, y[:3], 1, 2, 0.1, 0)
    with pytest.raises(DatasetError):
        evaluate("2nn", w, x.astype(np.float64), y)
    with pytest.raises(ConfigError):
        evaluate("2nn", w, x, y, batch_size=0)
