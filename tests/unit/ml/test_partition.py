"""Partitioners: disjoint, covering, the right sizes and label skew, and deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from qflare.errors import DatasetError
from qflare.ml import Dataset, dirichlet, iid, label_counts, pathological
from qflare.ml.partition import Partition

# Balanced like MNIST's ideal: 6,000 of each digit, shuffled.
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 6000)).astype(np.int64)


def _assert_disjoint(parts: Partition, total: int, covering: bool) -> None:
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # no index twice
    assert joined.min() >= 0 and joined.max() < total
    if covering:
        assert len(joined) == total
    assert all(p.dtype == np.int64 for p in parts)


def _same(a: Partition, b: Partition) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_iid() -> None:
    parts = iid(60000, 100, seed=1)
    _assert_disjoint(parts, 60000, covering=True)
    assert {len(p) for p in parts} == {600}
    assert _same(parts, iid(60000, 100, seed=1)) and not _same(parts, iid(60000, 100, seed=2))
    uneven = iid(10, 3, seed=0)
    assert sorted(len(p) for p in uneven) == [3, 3, 4]
    # Every client sees every class in roughly the global proportion.
    assert label_counts(LABELS, parts).min() > 20


def test_pathological_matches_the_paper_on_balanced_labels() -> None:
    parts = pathological(LABELS, 100, seed=1)
    _assert_disjoint(parts, 60000, covering=True)
    assert {len(p) for p in parts} == {600}
    counts = label_counts(LABELS, parts)
    # 6,000 per class = 20 whole shards, so no shard straddles two digits.
    assert ((counts > 0).sum(axis=1) <= 2).all()
    assert set(np.unique(counts)) <= {0, 300, 600}
    assert _same(parts, pathological(LABELS, 100, seed=1)) and not _same(parts, pathological(LABELS, 100, 2))


def test_pathological_on_real_mnist_labels(mnist: Dataset) -> None:
    parts = pathological(mnist.train_labels, 100, seed=0)
    _assert_disjoint(parts, 60000, covering=True)
    per_client = (label_counts(mnist.train_labels, parts) > 0).sum(axis=1)
    assert (per_client <= 4).all()  # two shards, each at most straddling a digit boundary
    assert (per_client <= 2).mean() >= 0.8


def test_pathological_generalises_and_drops_only_the_remainder() -> None:
    labels = LABELS[:1003]
    parts = pathological(labels, 10, seed=3, shards_per_client=3)
    assert {len(p) for p in parts} == {3 * (1003 // 30)}
    _assert_disjoint(parts, 1003, covering=False)
    assert sum(len(p) for p in parts) == 1003 - 1003 % 30
    with pytest.raises(DatasetError) as info:
        pathological(labels[:5], 10, seed=0)
    assert info.value.field == "num_clients"


def _classes_held(counts: NDArray[np.int64]) -> float:
    """Mean number of classes that make up at least 5% of a client's data."""
    shares = counts / counts.sum(axis=1, keepdims=True)
    return float((shares >= 0.05).sum(axis=1).mean())


def test_dirichlet_skew_follows_alpha() -> None:
    skewed = dirichlet(LABELS, 50, alpha=0.1, seed=4)
    mild = dirichlet(LABELS, 50, alpha=100.0, seed=4)
    for parts in (skewed, mild):
        _assert_disjoint(parts, 60000, covering=True)
        assert min(len(p) for p in parts) >= 1
    assert _classes_held(label_counts(LABELS, skewed)) < 4 < 9 < _classes_held(label_counts(LABELS, mild))
    assert _same(skewed, dirichlet(LABELS, 50, alpha=0.1, seed=4))
    assert not _same(skewed, dirichlet(LABELS, 50, alpha=0.1, seed=5))


def test_dirichlet_min_size_and_errors() -> None:
    parts = dirichlet(LABELS[:2000], 20, alpha=0.5, seed=0, min_size=30)
    assert min(len(p) for p in parts) >= 30
    with pytest.raises(DatasetError) as info:
        dirichlet(LABELS[:100], 20, alpha=0.05, seed=0, min_size=5, max_tries=3)
    assert info.value.field == "alpha"
    for kwargs, field in [({"alpha": 0.0}, "alpha"), ({"alpha": 1.0, "num_clients": 0}, "num_clients")]:
        with pytest.raises(DatasetError) as info:
            dirichlet(LABELS, seed=0, **{"num_clients": 5, **kwargs})  # type: ignore[arg-type]
        assert info.value.field == field
    with pytest.raises(DatasetError):
        iid(5, 10, seed=0)
