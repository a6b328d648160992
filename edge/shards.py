"""A device's shard of a built-in dataset, and the size it declares at enrolment.

Every device of a simulated fleet (and ``qflare-edge run --dataset``) cuts the same
dataset the same way (same partitioner and seed), keeps its own shard, and holds out
the first ``val_fraction`` of it as its local validation split; it trains on the
rest. That training split's size is what the device declares at enrolment (label
``qflare.num_examples``) and what its honest updates claim: the aggregator believes a
claim only up to the declared size.

The partition is computed before the device enrols and again when its app is built,
so it is cached per process. Torch-free: only numpy and the dataset files.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import numpy.typing as npt

from qflare.ml import Dataset, dirichlet, iid, load_dataset, pathological
from qflare.ml.data import DatasetName

#: The share of each shard held out as the device's local validation split, by default.
VAL_FRACTION = 0.1
#: The Dirichlet partitioner's concentration, by default.
ALPHA = 0.5


@functools.lru_cache(maxsize=2)
def builtin_shards(
    dataset: str, partition: str, total: int, seed: int, alpha: float
) -> tuple[Dataset, list[npt.NDArray[Any]]]:
    """The dataset, and the training-set indices of each of ``total`` devices' shards."""
    data = load_dataset(cast(DatasetName, dataset))
    if partition == "iid":
        shards = iid(len(data.train_labels), total, seed)
    elif partition == "pathological":
        shards = pathological(data.train_labels, total, seed)
    else:
        shards = dirichlet(data.train_labels, total, alpha, seed)
    return data, list(shards)


def split(shard: npt.NDArray[Any], val_fraction: float) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """A shard's (training, validation) indices: the first ``val_fraction`` is held out."""
    held = int(len(shard) * val_fraction)
    return shard[held:], shard[:held]


def train_size(shard: npt.NDArray[Any], val_fraction: float) -> int:
    """How many examples a device trains on: the size it declares."""
    return len(split(shard, val_fraction)[0])


def largest_train_size(
    dataset: str,
    partition: str,
    total: int,
    seed: int,
    alpha: float = ALPHA,
    val_fraction: float = VAL_FRACTION,
) -> int:
    """The largest size any of the ``total`` devices declares: what an operator may approve per token."""
    _, shards = builtin_shards(dataset, partition, total, seed, alpha)
    return max(train_size(shard, val_fraction) for shard in shards)
