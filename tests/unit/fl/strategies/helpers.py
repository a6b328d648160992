"""Small builders shared by the strategy tests: jobs, updates and one round through a strategy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.fl import JobSpec, Strategy, StrategyState, Update, build_strategy
from qflare.fl.arrays import NDArrays, Shape, shapes_of
from qflare.fl.spec import WEIGHTS


def make(name: str, **params: Any) -> Strategy:
    """The strategy ``name`` with ``params`` (others at their defaults) on a default job."""
    job: dict[str, Any] = params.pop("job", {})
    return build_strategy(JobSpec.parse({**job, "strategy": {"name": name, **params}}))


def f32(*values: float) -> NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def update(
    device: str,
    weights: Sequence[NDArray[Any]],
    n: int,
    metrics: Mapping[str, float] | None = None,
    **groups: Sequence[NDArray[Any]],
) -> Update:
    return Update(device, {WEIGHTS: list(weights), **groups}, n, dict(metrics or {}))


def run_round(
    strategy: Strategy,
    state: StrategyState,
    rnd: int,
    global_weights: Sequence[NDArray[Any]],
    updates: Sequence[Update],
    names: Sequence[str] | None = None,
    shapes: Sequence[Shape] | None = None,
) -> tuple[NDArrays, StrategyState]:
    """One round as the aggregator drives it: sums (streaming) or the sorted updates (buffered)."""
    shapes = list(shapes) if shapes is not None else shapes_of(global_weights)
    names = list(names) if names is not None else [f"t{i}" for i in range(len(shapes))]
    sums = strategy.begin_round(state, rnd, names, shapes)
    if strategy.mode == "buffered":
        return strategy.aggregate(state, sorted(updates, key=lambda u: u.device_id), global_weights)
    for u in updates:
        strategy.accumulate(sums, u)
    return strategy.aggregate(state, sums, global_weights)
