"""This device's data: its Dirichlet share of Fashion-MNIST, split into training and held-out parts.

Every device of a job computes the same partition (same seed, same pool), so the
shares are disjoint without any coordination; ``task.context.partition`` picks
this device's share. A real device with its own folder of images would replace
``device_split`` and keep everything else.

Settings (environment, ``QFLARE_VISION_`` prefix): ``examples_per_device`` caps the
data each device uses (0: the whole training set is shared out), ``alpha`` is the
Dirichlet concentration (small: few classes per device), ``holdout_fraction`` the
share of a device's examples kept back for federated evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from qflare.ml.data import load_dataset, to_float
from qflare.ml.partition import dirichlet


class VisionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_VISION_")

    examples_per_device: int = Field(0, ge=0)
    alpha: float = Field(0.5, gt=0)
    holdout_fraction: float = Field(0.1, gt=0, lt=1)


@dataclass(frozen=True)
class Split:
    """Images as float32 N x 1 x 28 x 28 in [0, 1], labels int64."""

    train_x: NDArray[np.float32]
    train_y: NDArray[np.int64]
    test_x: NDArray[np.float32]
    test_y: NDArray[np.int64]


def device_split(partition: int, num_partitions: int, seed: int) -> Split:
    """This device's share, as the settings say."""
    s = VisionSettings()
    return split(partition, num_partitions, seed, s.examples_per_device, s.alpha, s.holdout_fraction)


# A fleet worker process simulates many devices: read the files once, split once per device.
@lru_cache(maxsize=1)
def _fashion_mnist() -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    ds = load_dataset("fashion-mnist")
    return ds.train_images, ds.train_labels


@lru_cache(maxsize=64)
def split(
    partition: int, num_partitions: int, seed: int, per_device: int, alpha: float, holdout: float
) -> Split:
    """Share ``partition`` of ``num_partitions`` (Dirichlet(``alpha``) over a pool of ``per_device`` each)."""
    if not 0 <= partition < num_partitions:
        raise ValueError(f"partition {partition} is outside [0, {num_partitions})")
    images, labels = _fashion_mnist()
    pool = np.arange(len(labels))
    if per_device:
        pool = np.random.default_rng(seed).permutation(len(labels))[: per_device * num_partitions]
    shares = dirichlet(labels[pool], num_partitions, alpha, seed, min_size=10)
    mine = pool[shares[partition]]
    mine = np.random.default_rng([seed, partition]).permutation(mine)
    cut = max(1, round(len(mine) * holdout))
    test, train = mine[:cut], mine[cut:]
    # uint8 until here: only this device's examples become float32 (N x 1 x 28 x 28).
    return Split(
        to_float(images[train])[:, None], labels[train], to_float(images[test])[:, None], labels[test]
    )
