"""This device's data: its Dirichlet share of scikit-learn's digits (shipped with it, no download).

1,797 8x8 images of digits as 64 features in [0, 16], scaled here to [0, 1] by a
fixed constant, so every device preprocesses identically without sharing any
statistics. Settings: ``QFLARE_TABULAR_ALPHA`` (Dirichlet concentration) and
``QFLARE_TABULAR_HOLDOUT_FRACTION`` (the share kept back for federated evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sklearn.datasets import load_digits

from qflare.ml.partition import dirichlet

NUM_FEATURES, NUM_CLASSES = 64, 10


class TabularSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_TABULAR_")

    alpha: float = Field(1.0, gt=0)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)


@dataclass(frozen=True)
class Split:
    train_x: NDArray[np.float32]
    train_y: NDArray[np.int64]
    test_x: NDArray[np.float32]
    test_y: NDArray[np.int64]


def device_split(partition: int, num_partitions: int, seed: int) -> Split:
    s = TabularSettings()
    return split(partition, num_partitions, seed, s.alpha, s.holdout_fraction)


@lru_cache(maxsize=64)
def split(partition: int, num_partitions: int, seed: int, alpha: float, holdout: float) -> Split:
    if not 0 <= partition < num_partitions:
        raise ValueError(f"partition {partition} is outside [0, {num_partitions})")
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    shares = dirichlet(y, num_partitions, alpha, seed, min_size=10)
    mine = np.random.default_rng([seed, partition]).permutation(shares[partition])
    cut = max(1, round(len(mine) * holdout))
    test, train = mine[:cut], mine[cut:]
    return Split(x[train], y[train], x[test], y[test])
