"""Job configs are checked at start, naming the bad key."""

from __future__ import annotations

from typing import Any

import pytest

from qflare.errors import SchemaError
from qflare.fl import FedAvg, FedProx
from services.aggregator.jobs import JobConfig

GOOD: dict[str, Any] = {
    "model": "cnn",
    "strategy": "fedprox",
    "rounds": 10,
    "fraction": 0.1,
    "min_clients": 2,
    "deadline_s": 60,
    "epochs": 5,
    "batch_size": 10,
    "lr": 0.1,
    "seed": 1,
    "dataset": "fashion-mnist",
    "prox_mu": 0.01,
}


def test_parse_and_strategy() -> None:
    cfg = JobConfig.parse(GOOD)
    assert cfg.model == "cnn" and cfg.dataset == "fashion-mnist" and cfg.deadline_s == 60.0
    strategy = cfg.strategy_for("fedprox")
    assert isinstance(strategy, FedProx) and strategy.prox_mu == 0.01
    assert isinstance(
        JobConfig.parse({**GOOD, "strategy": "fedavg", "prox_mu": None}).strategy_for("fedavg"), FedAvg
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model", "resnet"),
        ("strategy", "fedadam"),
        ("dataset", "cifar"),
        ("rounds", 0),
        ("fraction", 1.5),
        ("fraction", 0),
        ("lr", 0),
        ("epochs", True),
        ("seed", 1.5),
        ("batch_size", None),
        ("prox_mu", -1),
    ],
)
def test_bad_values_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(SchemaError) as caught:
        JobConfig.parse({**GOOD, key: value})
    assert caught.value.field == f"body.config.{key}"
