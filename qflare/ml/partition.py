"""Split a dataset across simulated clients: IID, the FedAvg paper's pathological non-IID, Dirichlet.

Every partitioner is a pure function of its arguments and ``seed`` and returns one
int64 index array per client. Clients' index sets are disjoint. IID and Dirichlet
cover every example; the pathological split drops the ``len % num_shards``
examples that do not fill a whole shard (none for MNIST's 60,000 and 200 shards).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import DatasetError

Partition = list[NDArray[np.int64]]


def _check_positive(value: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DatasetError(f"must be a positive integer, got {value!r}", field=field)


def iid(num_examples: int, num_clients: int, seed: int) -> Partition:
    """Shuffle, then cut into ``num_clients`` parts whose sizes differ by at most one."""
    _check_positive(num_clients, "num_clients")
    if num_examples < num_clients:
        raise DatasetError(f"{num_examples} examples cannot fill {num_clients} clients", field="num_clients")
    order = np.random.default_rng(seed).permutation(num_examples).astype(np.int64)
    return [part.copy() for part in np.array_split(order, num_clients)]


def pathological(labels: NDArray[Any], num_clients: int, seed: int, shards_per_client: int = 2) -> Partition:
    """McMahan et al.'s non-IID split: sort by label, cut into shards, deal each client a few.

    With 60,000 MNIST examples and 100 clients this is the paper's 200 shards of
    300, two per client, so most clients see only two digits. In general there
    are ``shards_per_client * num_clients`` shards of ``len // num_shards`` each.
    """
    _check_positive(num_clients, "num_clients")
    _check_positive(shards_per_client, "shards_per_client")
    num_shards = num_clients * shards_per_client
    shard_size = len(labels) // num_shards
    if shard_size == 0:
        raise DatasetError(f"{len(labels)} examples cannot fill {num_shards} shards", field="num_clients")
    # Stable sort: ties keep index order, so the split depends only on the labels and the seed.
    by_label = np.argsort(labels, kind="stable").astype(np.int64)
    shards = by_label[: num_shards * shard_size].reshape(num_shards, shard_size)
    dealt = np.random.default_rng(seed).permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in client]) for client in dealt]


def dirichlet(
    labels: NDArray[Any],
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    max_tries: int = 100,
) -> Partition:
    """Per class, split its examples across clients in proportions drawn from Dirichlet(alpha).

    Small ``alpha`` (e.g. 0.1) gives each client a few dominant classes; large
    ``alpha`` approaches IID. A draw that leaves some client with fewer than
    ``min_size`` examples is redrawn (from the same seeded stream, so the result
    is still deterministic), up to ``max_tries`` times.
    """
    _check_positive(num_clients, "num_clients")
    if not alpha > 0:
        raise DatasetError(f"must be positive, got {alpha!r}", field="alpha")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[NDArray[np.int64]]] = [[] for _ in range(num_clients)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c)).astype(np.int64)
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for client, piece in enumerate(np.split(members, cuts)):
                parts[client].append(piece)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise DatasetError(
        f"no draw in {max_tries} gave every client {min_size} examples; raise alpha or lower min_size",
        field="alpha",
    )


def label_counts(labels: NDArray[Any], partition: Partition, num_classes: int = 10) -> NDArray[np.int64]:
    """A clients x classes table of example counts (for reports and tests)."""
    return np.stack([np.bincount(labels[idx], minlength=num_classes) for idx in partition]).astype(np.int64)
