"""Builders for the robust-aggregator tests: scalar rounds, a job sized for a bound, a fixed root trainer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.fl import JobSpec, Strategy, Update
from qflare.fl.strategies._robust import RobustStrategy
from qflare.fl.strategies.fltrust import FLTrust
from tests.unit.fl.strategies.helpers import f32, make, update


def sized(n: int) -> dict[str, Any]:
    """Job settings whose every round closes with at least ``n`` updates."""
    return {"min_clients": n, "quorum": 1.0}


def robust(name: str, n: int, **params: Any) -> RobustStrategy:
    """Strategy ``name`` on a job sized for ``n`` updates (FLTrust's server delta from ``server``)."""
    if name == "fltrust":
        server = params.pop("server", None)
        job = JobSpec.parse({**sized(n), "strategy": {"name": "fltrust", **params}})
        return FLTrust(job, root_trainer=fixed_trainer(server))
    strategy = make(name, job=sized(n), **params)
    assert isinstance(strategy, RobustStrategy)
    return strategy


def fixed_trainer(server: Sequence[NDArray[Any]] | None) -> Any:
    """A root trainer giving ``server`` (default: a tenth of the global model, negated)."""

    def train(weights: Sequence[NDArray[Any]], rnd: int) -> list[NDArray[Any]]:
        if server is not None:
            return [np.asarray(s, np.float64) for s in server]
        return [-0.1 * np.asarray(w, np.float64) for w in weights]

    return train


def scalars(*values: float, examples: Sequence[int] | None = None) -> list[Update]:
    """One single-value update per value, devices ``d0``, ``d1``, … in order."""
    counts = examples or [1] * len(values)
    return [update(f"d{i}", [f32(v)], counts[i]) for i, v in enumerate(values)]


def one_round(
    strategy: Strategy, updates: Sequence[Update], glob: Sequence[NDArray[Any]] | None = None
) -> float:
    """The new global value of a single-value model after one round from 0."""
    new, _ = strategy.aggregate(strategy.initial_state(), updates, list(glob or [f32(0.0)]))
    return float(new[0][0])
