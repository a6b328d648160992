"""One module per aggregation algorithm, and a lookup by the name a job config uses."""

from __future__ import annotations

from typing import Any

from qflare.errors import ConfigError
from qflare.fl.strategies.fedavg import FedAvg
from qflare.fl.strategies.fedprox import FedProx
from qflare.fl.strategy import Strategy

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, FedProx)}


def build_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate the strategy called ``name`` with its hyperparameters."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}", field="strategy"
        ) from None
    try:
        return cls(**params)
    except TypeError as exc:  # an unexpected keyword: name it instead of surfacing a Python signature error
        raise ConfigError(f"bad parameters for {name!r}: {exc}", field="strategy") from exc


__all__ = ["STRATEGIES", "FedAvg", "FedProx", "build_strategy"]
