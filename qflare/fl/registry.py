"""The strategies a job may name: a registry filled by a decorator, one module per strategy.

Adding a strategy is one module under ``qflare/fl/strategies/`` (every module there
is imported, see its ``__init__``) that defines the strategy's parameters and its
class and decorates the class::

    class FedFooParams(StrategyParams):
        name: Literal["fedfoo"] = "fedfoo"
        beta: float = Field(0.9, gt=0)

    @register_strategy
    class FedFoo(FedAvg):
        name = "fedfoo"
        Params = FedFooParams

``JobSpec`` then accepts ``{"strategy": {"name": "fedfoo", "beta": 0.5}}``, and
the scheduler and the aggregator build it with ``build_strategy``.
"""

from __future__ import annotations

from typing import TypeVar

from qflare.errors import ConfigError
from qflare.fl.job import JobSpec, register_params
from qflare.fl.strategy import Strategy

S = TypeVar("S", bound=type[Strategy])

STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: S) -> S:
    """Make ``cls`` (and its ``Params``) available to jobs under ``cls.name``."""
    if cls.Params.model_fields["name"].default != cls.name:
        raise ConfigError(f"{cls.__name__}.Params must be named {cls.name!r}", field="name")
    if STRATEGIES.get(cls.name, cls) is not cls:
        raise ConfigError(f"strategy {cls.name!r} is registered already", field="name")
    register_params(cls.Params)
    STRATEGIES[cls.name] = cls
    return cls


def build_strategy(job: JobSpec) -> Strategy:
    """The strategy object for ``job`` (its parameters are ``job.strategy``)."""
    name = job.strategy.name
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}", field="strategy.name"
        ) from None
    return cls(job)
