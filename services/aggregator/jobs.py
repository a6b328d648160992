"""A job's configuration, as an operator's ``JobCommand("start", config)`` carries it.

The aggregator needs only the model, strategy, seed and dataset, but checks
every documented key so a malformed job is refused at ``start`` (naming the key)
rather than failing rounds later. The scheduler reads the same config for
selection and deadlines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from qflare.errors import SchemaError
from qflare.fl import STRATEGIES, Strategy, build_strategy
from qflare.ml import DATASET_NAMES, MODEL_NAMES, DatasetName, ModelName
from qflare.types import Scalar
from services.aggregator.models import Layout


@dataclass(frozen=True, slots=True)
class JobConfig:
    model: ModelName
    strategy: str
    dataset: DatasetName
    seed: int
    rounds: int
    fraction: float
    min_clients: int
    deadline_s: float
    epochs: int
    batch_size: int
    lr: float
    prox_mu: float | None

    @classmethod
    def parse(cls, config: Mapping[str, Scalar]) -> JobConfig:
        """Validate a start command's config; ``SchemaError`` names the offending key."""
        mu = config.get("prox_mu")
        out = cls(
            model=cast(ModelName, _choice(config, "model", MODEL_NAMES)),
            strategy=_choice(config, "strategy", tuple(STRATEGIES)),
            dataset=cast(DatasetName, _choice(config, "dataset", DATASET_NAMES)),
            seed=_int(config, "seed", 0),
            rounds=_int(config, "rounds", 1),
            fraction=_float(config, "fraction", 0.0),
            min_clients=_int(config, "min_clients", 1),
            deadline_s=_float(config, "deadline_s", 0.0),
            epochs=_int(config, "epochs", 1),
            batch_size=_int(config, "batch_size", 0),
            lr=_float(config, "lr", 0.0),
            prox_mu=None if mu is None else _float(config, "prox_mu", 0.0),
        )
        if not 0 < out.fraction <= 1:
            raise SchemaError("must be in (0, 1]", field="body.config.fraction")
        for key in ("lr", "deadline_s"):
            if not getattr(out, key) > 0:
                raise SchemaError("must be positive", field=f"body.config.{key}")
        return out

    def strategy_for(self, name: str) -> Strategy:
        """The strategy object for a round (server-side maths only; hyperparameters are the job's)."""
        params: dict[str, Any] = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        if name == "fedprox" and self.prox_mu is not None:
            params["prox_mu"] = self.prox_mu
        return build_strategy(name, **params)


def _field(key: str) -> str:
    return f"body.config.{key}"


def _choice(config: Mapping[str, Scalar], key: str, allowed: tuple[str, ...]) -> str:
    value = config.get(key)
    if not isinstance(value, str) or value not in allowed:
        raise SchemaError(f"must be one of {list(allowed)}, got {value!r}", field=_field(key))
    return value


def _int(config: Mapping[str, Scalar], key: str, lo: int) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise SchemaError(f"must be an integer >= {lo}, got {value!r}", field=_field(key))
    return value


def _float(config: Mapping[str, Scalar], key: str, lo: float) -> float:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
        raise SchemaError(f"must be a number >= {lo}, got {value!r}", field=_field(key))
    return float(value)


@dataclass(slots=True)
class Job:
    """A job the aggregator knows: its config, status and the strategy state between rounds."""

    job_id: str
    config: JobConfig
    status: str
    strategy_state: bytes

    @property
    def layout(self) -> Layout:
        return Layout.of(self.config.model)
