"""Tensor groups on the device: the model record split by the round's config, the update's wire order."""

from __future__ import annotations

import numpy as np
import pytest

from edge.groups import default_local_steps, split_model, update_tensors
from qflare.errors import SchemaError
from qflare.fl import FedAvg, JobSpec, TrainConfig


def _config(**keys: object) -> TrainConfig:
    base = FedAvg(JobSpec(batch_size=10, epochs=2)).train_config(1).to_config()
    return TrainConfig.parse({**base, **keys})


def _a(value: float, n: int = 2) -> np.ndarray:
    return np.full(n, value, np.float32)


def test_a_scaffold_round_splits_the_control_group_into_the_weights_order() -> None:
    names = ("x", "y", "control/y", "control/x")
    weights, weight_names, groups = split_model(names, [_a(1), _a(2), _a(20), _a(10)], _config(scaffold=True))
    assert weight_names == ("x", "y") and [w[0] for w in weights] == [1, 2]
    assert [g[0] for g in groups["control"]] == [10, 20]


def test_without_scaffold_a_slash_in_a_name_is_just_a_weight() -> None:
    names = ("block/0.weight", "control/x")
    _, weight_names, groups = split_model(names, [_a(1), _a(2)], _config())
    assert weight_names == names and groups == {}


def test_a_control_group_must_name_the_weights() -> None:
    with pytest.raises(SchemaError) as info:
        split_model(("x", "control/z"), [_a(1), _a(2)], _config(scaffold=True))
    assert info.value.field == "tensors.control"


def test_update_wire_order_and_personal_tensors() -> None:
    names = ("a", "head", "b")
    tensors = update_tensors(
        names,
        [_a(1), _a(2), _a(3)],
        {"zeta": [_a(7), _a(8), _a(9)], "control": [_a(4), _a(5), _a(6)]},
        personal="head",
    )
    assert [t.name for t in tensors] == [
        "a", "b",
        "control/a", "control/head", "control/b",
        "zeta/a", "zeta/head", "zeta/b",
    ]  # fmt: skip
    assert all(t.dtype == "<f4" for t in tensors)


def test_default_local_steps() -> None:
    assert default_local_steps(_config(), 25) == 6  # 2 epochs of ceil(25 / 10)
    assert default_local_steps(_config(batch_size=0), 25) == 2
    assert default_local_steps(_config(), 0) == 2
