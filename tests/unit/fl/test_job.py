"""The one job schema: defaults, typed choices, errors that name the key, and strategies that register."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field

from qflare.errors import ConfigError, SchemaError
from qflare.fl import (
    STRATEGIES,
    FedAvg,
    FedProx,
    FedProxParams,
    JobSpec,
    StrategyParams,
    TrainConfig,
    build_strategy,
    register_strategy,
)
from qflare.fl import job as job_module
from qflare.fl.job import builtin_model


def test_defaults_and_wire_round_trip() -> None:
    spec = JobSpec()
    assert (spec.model, spec.dataset, spec.partition, spec.strategy.name) == (
        "builtin:2nn",
        "mnist",
        "iid",
        "fedavg",
    )
    wire = JobSpec.parse({"strategy": {"name": "fedprox"}, "model": "builtin:cnn"}).to_wire()
    assert wire["strategy"] == {"name": "fedprox", "proximal_mu": 0.01}
    assert JobSpec.parse(wire).to_wire() == wire
    assert JobSpec.parse({"lr": 1, "deadline_s": 60}).lr == 1.0  # an int is a number


def test_proximal_mu_has_one_default_and_reaches_the_instructions() -> None:
    spec = JobSpec.parse({"strategy": {"name": "fedprox"}})
    assert isinstance(spec.strategy, FedProxParams)
    assert spec.strategy.proximal_mu == FedProxParams.model_fields["proximal_mu"].default == 0.01
    configs = build_strategy(spec).configure_round(1, ["a", "b"])
    assert {c.proximal_mu for c in configs.values()} == {0.01}
    chosen = JobSpec.parse({"strategy": {"name": "fedprox", "proximal_mu": 0.5}})
    assert build_strategy(chosen).train_config(3).proximal_mu == 0.5
    assert build_strategy(JobSpec()).train_config(3).proximal_mu == 0.0  # FedAvg: plain SGD


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"colour": "blue"}, "config.colour"),
        ({"rounds": "ten"}, "config.rounds"),
        ({"rounds": 0}, "config.rounds"),
        ({"epochs": True}, "config.epochs"),
        ({"seed": 1.5}, "config.seed"),
        ({"fraction": 1.5}, "config.fraction"),
        ({"fraction": 0}, "config.fraction"),
        ({"lr": 0}, "config.lr"),
        ({"batch_size": None}, "config.batch_size"),
        ({"dataset": "cifar"}, "config.dataset"),
        ({"partition": "random"}, "config.partition"),
        ({"model": "resnet"}, "config.model"),
        ({"model": "builtin:resnet"}, "config.model"),
        ({"model": "2nn"}, "config.model"),  # a bare name is not a reference
        ({"strategy": "fedavg"}, "config.strategy"),
        ({"strategy": {}}, "config.strategy.name"),
        ({"strategy": {"name": "fedfoo"}}, "config.strategy.name"),
        ({"strategy": {"name": "fedprox", "proximal_mu": -1}}, "config.strategy.proximal_mu"),
        ({"strategy": {"name": "fedprox", "proximal_mu": "x"}}, "config.strategy.proximal_mu"),
        ({"strategy": {"name": "fedavg", "proximal_mu": 0.1}}, "config.strategy.proximal_mu"),
        ({"strategy": {"name": "fedprox", "prox_mu": 0.1}}, "config.strategy.prox_mu"),
    ],
)
def test_errors_name_the_bad_key(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(SchemaError) as info:
        JobSpec.parse(raw)
    assert info.value.field == field
    with pytest.raises(SchemaError) as info:
        JobSpec.parse(raw, where="body.config")
    assert info.value.field == f"body.{field}"


def test_model_references() -> None:
    assert JobSpec.parse({"model": "builtin:cnn"}).builtin == "cnn"
    store = JobSpec.parse({"model": "my-net@3"})  # parses; whether it exists is the aggregator's call
    assert store.builtin is None and builtin_model(store.model) is None


def test_train_config_requires_every_key_and_refuses_unknown_ones() -> None:
    good = build_strategy(JobSpec()).train_config(1).to_config()
    assert TrainConfig.parse(good).to_config() == good
    cases: list[tuple[str, object]] = [
        ("epochs", 0),
        ("epochs", 1.5),
        ("batch_size", True),
        ("lr", 0),
        ("lr", "fast"),
        ("proximal_mu", -0.1),
        ("evaluate", 1),
        ("prox_mu", 0.1),
        ("epoch", 7),  # the fencing token no longer rides in the config
    ]
    for key, value in cases:
        with pytest.raises(SchemaError) as info:
            TrainConfig.parse({**good, key: value})
        assert info.value.field == f"config.{key}"
    with pytest.raises(SchemaError) as info:
        TrainConfig.parse({k: v for k, v in good.items() if k != "lr"})
    assert info.value.field == "config.lr"


class _ToyParams(StrategyParams):
    name: Literal["toy"] = "toy"
    decay: float = Field(0.5, gt=0, le=1)


@pytest.fixture
def toy() -> Iterator[type[FedAvg]]:
    """A strategy registered the way a new module would: one class, one decorator."""

    @register_strategy
    class Toy(FedAvg):
        """FedAvg with a learning rate that decays each round."""

        name = "toy"
        Params: ClassVar[type[StrategyParams]] = _ToyParams

        def train_config(self, round: int) -> TrainConfig:
            params = self.job.strategy
            assert isinstance(params, _ToyParams)
            base = super().train_config(round)
            return base.model_copy(update={"lr": base.lr * params.decay ** (round - 1)})

    yield Toy
    # Leave the registry as the other tests expect it.
    del STRATEGIES["toy"]
    del job_module._PARAMS["toy"]
    job_module._union = None


def test_a_registered_strategy_is_a_job_choice_with_its_own_parameters(toy: type[FedAvg]) -> None:
    spec = JobSpec.parse({"strategy": {"name": "toy", "decay": 0.1}, "lr": 1.0})
    strategy = build_strategy(spec)
    assert isinstance(strategy, toy)
    assert [strategy.train_config(r).lr for r in (1, 2)] == [1.0, pytest.approx(0.1)]
    assert JobSpec.parse(spec.to_wire()) == spec
    with pytest.raises(SchemaError) as info:
        JobSpec.parse({"strategy": {"name": "toy", "decay": 2}})
    assert info.value.field == "config.strategy.decay"
    with pytest.raises(ConfigError):  # a name is registered once
        register_strategy(type("Toy2", (toy,), {}))


def test_a_strategy_is_built_for_its_own_parameters_only() -> None:
    assert set(STRATEGIES) >= {"fedavg", "fedprox"}
    assert isinstance(build_strategy(JobSpec.parse({"strategy": {"name": "fedprox"}})), FedProx)
    with pytest.raises(ConfigError) as info:
        FedProx(JobSpec())
    assert info.value.field == "strategy.name"
