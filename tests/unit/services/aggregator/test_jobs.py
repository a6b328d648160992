"""The aggregator's jobs: the one job schema, a model it has, and one strategy object per job."""

from __future__ import annotations

from typing import Any

import pytest

from qflare.errors import Rejected, SchemaError
from qflare.fl import FedAvg, FedProx, JobSpec
from qflare.protocol import Tensor
from qflare.protocol.store import StoredModel
from services.aggregator.jobs import Job
from tests.model_samples import sample_tensors

GOOD: dict[str, Any] = {
    "model": "builtin:cnn",
    "strategy": {"name": "fedprox", "proximal_mu": 0.01},
    "rounds": 10,
    "fraction": 0.1,
    "min_clients": 2,
    "deadline_s": 60,
    "epochs": 5,
    "batch_size": 10,
    "lr": 0.1,
    "seed": 1,
    "dataset": "fashion-mnist",
}


def test_a_job_holds_its_spec_model_and_strategy() -> None:
    job = Job("j", JobSpec.parse(GOOD, where="body.config"), "running")
    assert job.model == "cnn" and job.config.dataset == "fashion-mnist" and job.config.deadline_s == 60.0
    assert isinstance(job.strategy, FedProx) and job.strategy.proximal_mu == 0.01
    assert job.layout.names[0] == "conv1.weight" and job.strategy_state and job.fencing_token == 0
    plain = Job("k", JobSpec.parse({**GOOD, "strategy": {"name": "fedavg"}}), "running")
    assert type(plain.strategy) is FedAvg


def test_a_model_outside_the_built_ins_is_refused_until_the_store_has_it() -> None:
    with pytest.raises(Rejected) as info:
        Job("j", JobSpec.parse({**GOOD, "model": "my-net@1"}), "running")
    assert (info.value.reason, info.value.field) == ("unknown_model", "body.config.model")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model", "resnet"),
        ("strategy", {"name": "fedfoo"}),
        ("dataset", "cifar"),
        ("rounds", 0),
        ("fraction", 1.5),
        ("lr", 0),
        ("epochs", True),
        ("seed", 1.5),
        ("batch_size", None),
        ("strategy", {"name": "fedprox", "proximal_mu": -1}),
    ],
)
def test_bad_values_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(SchemaError) as caught:
        JobSpec.parse({**GOOD, key: value}, where="body.config")
    assert caught.value.field is not None and caught.value.field.startswith(f"body.config.{key}")


def _stored(name: str = "my-net", version: str = "1") -> StoredModel:
    tensors = tuple(Tensor.of(n, a) for n, a in sample_tensors().items())
    return StoredModel(name, version, "safetensors", tensors)


def test_a_stored_model_gives_the_layout_and_version_0() -> None:
    stored = _stored()
    job = Job("j", JobSpec.parse({**GOOD, "model": "my-net@1"}), "running", stored=stored)
    assert job.builtin is None and job.model == "my-net@1"
    assert job.layout.names == tuple(sample_tensors())
    assert job.layout.shapes == tuple(a.shape for a in sample_tensors().values())
    for got, expected in zip(job.initial_weights(), sample_tensors().values(), strict=True):
        assert got.tobytes() == expected.tobytes()


def test_a_stored_model_of_another_name_or_version_is_no_match() -> None:
    for other in (_stored(version="2"), _stored(name="their-net")):
        with pytest.raises(Rejected) as info:
            Job("j", JobSpec.parse({**GOOD, "model": "my-net@1"}), "running", stored=other)
        assert info.value.reason == "unknown_model"
