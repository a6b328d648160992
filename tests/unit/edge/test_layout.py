"""The device's own layout check: a wrong return value is a failed reply naming the tensor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge.app import DeviceApp, Failure, TrainResult, TrainTask
from edge.layout import LayoutError, check_layout
from qflare.fl import FedAvg, JobSpec
from qflare.reasons import Reason

NAMES = ("fc1.weight", "fc1.bias")
MODEL = [np.zeros((4, 3), np.float32), np.zeros(4, np.float32)]


def _check(returned: Any) -> str:
    with pytest.raises(LayoutError) as caught:
        check_layout(NAMES, MODEL, returned)
    assert caught.value.reason == Reason.SHAPE
    return str(caught.value)


def test_the_right_layout_passes_as_a_list_or_a_dict_in_order() -> None:
    assert check_layout(NAMES, MODEL, [w + 1 for w in MODEL])[1].shape == (4,)
    as_dict = check_layout(NAMES, MODEL, {"fc1.weight": MODEL[0], "fc1.bias": MODEL[1]})
    assert as_dict[0] is MODEL[0] and as_dict[1] is MODEL[1]


def test_each_wrong_layout_names_the_tensor() -> None:
    assert _check([MODEL[0]]).startswith("weights: 1 tensors returned, the global model has 2")
    assert "fc1.bias" in _check([MODEL[0]])
    assert _check([MODEL[0], np.zeros(5, np.float32)]).startswith("fc1.bias: shape (5,) != the global")
    assert _check([MODEL[0].astype(np.float64), MODEL[1]]).startswith("fc1.weight: dtype float64 != ")
    assert _check([MODEL[0], [0.0] * 4]).startswith("fc1.bias: is a builtins.list, not a numpy array")
    assert _check({"fc1.bias": MODEL[1], "fc1.weight": MODEL[0]}).startswith(
        "fc1.bias: returned at position 0, where the global model has 'fc1.weight'"
    )
    assert _check({"fc1.weight": MODEL[0]}).startswith("fc1.bias: missing")
    assert _check({**dict(zip(NAMES, MODEL, strict=True)), "fc2.bias": MODEL[1]}).startswith(
        "fc2.bias: is not a tensor of the global model"
    )
    assert _check(MODEL[0]).startswith("weights: expected a list of numpy arrays")


async def test_a_handler_returning_the_wrong_layout_is_a_failed_reply() -> None:
    app = DeviceApp()

    @app.train
    def train(task: TrainTask) -> TrainResult:
        return TrainResult([task.weights[0], np.zeros(4, np.float64)], 10)

    config = FedAvg(JobSpec(lr=0.1)).train_config(1)
    outcome = await app.run_train(TrainTask(1, 0, list(MODEL), config, NAMES))
    assert isinstance(outcome, Failure) and outcome.reason == Reason.SHAPE
    assert outcome.message.startswith("@app.train returned the wrong layout: fc1.bias: dtype float64")
