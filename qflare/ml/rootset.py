"""FLTrust's root set: a few test-split images the server trains on, held out from evaluation.

The root set is the first ``size`` indices of a fixed permutation of the test split
(seed ``ROOT_SEED``), so it does not depend on the job and a smaller root set is part
of a larger one. Central evaluation must skip these images (``evaluation_indices``)
so that no defence is scored on data the server trained on; skipping them for every
job keeps the accuracies of different defences comparable.

``root_update`` trains the global model on the root set exactly as a device trains
(the job's epochs, batch size and learning rate) and returns the change, the
server's own update. It imports torch, so only the server-side FLTrust call uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import ConfigError
from qflare.fl.arrays import NDArrays
from qflare.ml.arch import ModelName
from qflare.ml.data import Dataset, DatasetName, load_dataset

#: The FLTrust paper's root set size.
ROOT_SIZE = 100
ROOT_SEED = 20210221


def root_indices(num_test: int, size: int = ROOT_SIZE) -> NDArray[np.int64]:
    """The test-split indices of the root set, ascending."""
    if not 0 < size <= num_test:
        raise ConfigError(f"a root set of {size} from {num_test} test images", field="root_size")
    perm = np.random.default_rng(ROOT_SEED).permutation(num_test)
    return np.sort(perm[:size]).astype(np.int64)


def evaluation_indices(num_test: int, size: int = ROOT_SIZE) -> NDArray[np.int64]:
    """The test-split indices central evaluation should use: all but the root set, ascending."""
    keep = np.ones(num_test, dtype=bool)
    keep[root_indices(num_test, size)] = False
    return np.flatnonzero(keep).astype(np.int64)


def root_set(data: Dataset, size: int = ROOT_SIZE) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    idx = root_indices(len(data.test_labels), size)
    return data.test_images[idx], data.test_labels[idx]


@lru_cache(maxsize=4)
def _dataset(name: DatasetName, data_dir: Path | None) -> Dataset:
    return load_dataset(name, data_dir)


def root_update(
    model: ModelName,
    dataset: DatasetName,
    weights: Sequence[NDArray[Any]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    size: int = ROOT_SIZE,
    data_dir: Path | None = None,
) -> NDArrays:
    """The server's update on the root set: trained weights minus ``weights`` (float64, per tensor)."""
    from qflare.ml.train import train_local  # torch, only here

    images, labels = root_set(_dataset(dataset, data_dir), size)
    result = train_local(model, weights, images, labels, epochs, batch_size, lr, seed)
    return [
        np.asarray(new, np.float64) - np.asarray(old, np.float64)
        for new, old in zip(result.weights, weights, strict=True)
    ]
