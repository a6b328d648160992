"""Grids of jobs for ``qflare sim sweep``: ``--grid lr=0.01,0.1 --grid strategy=fedavg,fedprox``.

A grid key is a ``JobSpec`` field (``lr``, ``epochs``, ``batch_size``, ``partition``,
``strategy`` ...) or else one of the strategy's own parameters (``proximal_mu``,
``server_lr`` ...). Values are parsed as JSON scalars where they are (``0.1``,
``5``, ``true``) and kept as text otherwise (``fedprox``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from qflare.errors import ConfigError
from qflare.fl.job import JobSpec
from qflare.types import Scalar


def scalar(text: str) -> Scalar:
    """``"0.1"`` -> 0.1, ``"5"`` -> 5, ``"true"`` -> True, anything else stays text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, int | float | bool | str) else text


def key_value(text: str, *, field: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ConfigError(f"{text!r} is not key=value", field=field)
    return key.strip(), value.strip()


def parse_grid(items: Sequence[str]) -> dict[str, list[Scalar]]:
    """``["lr=0.01,0.1", "strategy=fedavg,fedprox"]`` -> ``{"lr": [0.01, 0.1], "strategy": [...]}``."""
    grid: dict[str, list[Scalar]] = {}
    for item in items:
        key, values = key_value(item, field="grid")
        if key in grid:
            raise ConfigError(f"{key!r} is given twice", field="grid")
        grid[key] = [scalar(v) for v in values.split(",") if v.strip()]
    return grid


def points(grid: Mapping[str, Sequence[Scalar]]) -> list[dict[str, Scalar]]:
    """Every combination of the grid's values, in the order given (the last key varies fastest)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def apply(base: Mapping[str, Any], point: Mapping[str, Scalar]) -> JobSpec:
    """The job ``base`` (a ``JobSpec`` map) with ``point``'s settings; strategy parameters by name."""
    spec = dict(base)
    strategy = dict(spec.get("strategy", {"name": "fedavg"}))
    for key, value in point.items():
        if key == "strategy":
            strategy = {"name": value}
        elif key in JobSpec.model_fields:
            spec[key] = value
        else:
            strategy[key] = value
    # A strategy switched by the grid keeps the base's parameters only if it declares them.
    if "strategy" in point:
        declared = _declared(str(strategy["name"]))
        strategy = {k: v for k, v in strategy.items() if k in declared or k in point}
        for key, value in dict(base.get("strategy", {})).items():
            if key in declared and key not in strategy:
                strategy[key] = value
    spec["strategy"] = strategy
    return JobSpec.parse(spec)


def _declared(name: str) -> set[str]:
    from qflare.fl.registry import STRATEGIES

    cls = STRATEGIES.get(name)
    return set(cls.Params.model_fields) if cls is not None else {"name"}


def label(point: Mapping[str, Scalar]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()) or "job"
