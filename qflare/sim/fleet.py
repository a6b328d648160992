"""The simulated fleet's data, split exactly as the services' simulated fleet splits it.

``edge.simulator.worker`` gives device ``i`` of ``K`` partition ``i`` of the job's
partitioner (seeded by the fleet seed), holds out the first 10% of each shard as its
local validation split, and seeds its local SGD with ``fleet seed + i``; each round
the device draws its example order from ``device seed * 100_003 + round``
(``edge.training.mnist_app``). The same rules here give the same inputs, so the
same job gives the same global model in process as through Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import ConfigError
from qflare.ml import DatasetName, dirichlet, iid, load_dataset, pathological

#: Share of each shard held out for local validation (``qflare_cli.demo.Run.val_fraction``).
VAL_FRACTION = 0.1
#: Round seed = device seed * ROUND_SEED_STRIDE + round (``edge.training.mnist_app``).
ROUND_SEED_STRIDE = 100_003


def device_ids(count: int) -> list[str]:
    """Names that sort in index order, as the demo's ``dev-<run>-NNN`` do: selection depends on it."""
    width = max(3, len(str(count - 1)))
    return [f"dev-{i:0{width}d}" for i in range(count)]


def round_seed(fleet_seed: int, index: int, round_no: int) -> int:
    """The seed of device ``index``'s example order in ``round_no``."""
    return (fleet_seed + index) * ROUND_SEED_STRIDE + round_no


@dataclass(frozen=True)
class SimFleet:
    """``K`` devices' training shards (indices into the dataset's training split) and the data."""

    dataset: DatasetName
    seed: int
    ids: list[str]
    #: Device i's training examples: indices into ``train_images`` (its validation share removed).
    train_index: list[NDArray[np.int64]]
    train_images: NDArray[np.uint8]
    train_labels: NDArray[np.int64]
    test_images: NDArray[np.uint8]
    test_labels: NDArray[np.int64]
    #: Device i's held-out examples (the first ``val_fraction`` of its shard): its own test split,
    #: on which Ditto and FedPer devices report ``personal_accuracy``. Empty when not kept.
    val_index: list[NDArray[np.int64]] = field(default_factory=list)

    def images(self, index: int) -> NDArray[np.uint8]:
        return self.train_images[self.train_index[index]]

    def labels(self, index: int) -> NDArray[np.int64]:
        return self.train_labels[self.train_index[index]]

    def num_examples(self, index: int) -> int:
        return len(self.train_index[index])

    def val_images(self, index: int) -> NDArray[np.uint8]:
        return self.train_images[self.val_index[index]]

    def val_labels(self, index: int) -> NDArray[np.int64]:
        return self.train_labels[self.val_index[index]]

    def has_val(self, index: int) -> bool:
        return index < len(self.val_index) and len(self.val_index[index]) > 0


def make_fleet(
    dataset: DatasetName,
    partition: str,
    devices: int,
    seed: int,
    *,
    alpha: float = 0.5,
    val_fraction: float = VAL_FRACTION,
) -> SimFleet:
    """Split ``dataset`` over ``devices`` as ``edge.simulator.worker._install_builtin_app`` does."""
    if devices < 1:
        raise ConfigError(f"need at least one device, got {devices}", field="devices")
    data = load_dataset(dataset)
    shards: list[Any]
    if partition == "iid":
        shards = iid(len(data.train_labels), devices, seed)
    elif partition == "pathological":
        shards = pathological(data.train_labels, devices, seed)
    elif partition == "dirichlet":
        shards = dirichlet(data.train_labels, devices, alpha, seed)
    else:
        raise ConfigError(f"unknown partition {partition!r}", field="partition")
    train, val = [], []
    for shard in shards:
        held = int(len(shard) * val_fraction)
        train.append(np.asarray(shard[held:], dtype=np.int64))
        val.append(np.asarray(shard[:held], dtype=np.int64))
    return SimFleet(
        dataset=dataset,
        seed=seed,
        ids=device_ids(devices),
        train_index=train,
        train_images=data.train_images,
        train_labels=data.train_labels,
        test_images=data.test_images,
        test_labels=data.test_labels,
        val_index=val,
    )
