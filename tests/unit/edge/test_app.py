"""The device SDK: decorators register handlers; failures come back as data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.app import DeviceApp, DeviceContext, Failure, TrainResult, TrainTask
from qflare.fl import FedAvg, JobSpec


def _task() -> TrainTask:
    config = FedAvg(JobSpec(lr=0.1)).train_config(1)
    return TrainTask(round=1, model_version=1, weights=[np.zeros(3, np.float32)], config=config)


async def test_train_handler_with_and_without_parentheses() -> None:
    plain, called = DeviceApp(), DeviceApp()

    @plain.train
    def train(task: TrainTask) -> TrainResult:
        return TrainResult([w + 1 for w in task.weights], 10, {"loss": 0.5})

    @called.train()
    async def train_async(task: TrainTask) -> TrainResult:
        return TrainResult(task.weights, 5)

    result = await plain.run_train(_task())
    assert isinstance(result, TrainResult) and result.num_examples == 10
    # Checked against the task's layout, the weights come back as a list in the model's order.
    assert isinstance(result.weights, list)
    assert np.array_equal(result.weights[0], np.ones(3, np.float32))
    assert isinstance(await called.run_train(_task()), TrainResult)


async def test_failures_are_replies_not_exceptions() -> None:
    app = DeviceApp()
    assert await app.run_train(_task()) == Failure("handler_missing", "no @app.train handler is registered")

    @app.train
    def broken(task: TrainTask) -> TrainResult:
        raise ValueError("bad batch")

    outcome = await app.run_train(_task())
    assert isinstance(outcome, Failure) and outcome.reason == "ValueError"

    @app.train
    def diverged(task: TrainTask) -> TrainResult:
        return TrainResult([np.full(3, np.nan, np.float32)], 1)

    outcome = await app.run_train(_task())
    assert isinstance(outcome, Failure) and outcome.reason == "non_finite"
    assert outcome.message == "train produced NaN or Inf in tensors ['#0']"

    @app.train
    def buggy(task: TrainTask) -> TrainResult:
        table: dict[str, TrainResult] = {}
        return table["no such key"]

    outcome = await app.run_train(_task())
    assert outcome == Failure("KeyError", "'no such key'")


async def test_tasks_carry_names_and_the_device_context(tmp_path: Path) -> None:
    app, seen = DeviceApp(), []

    @app.train
    def train(task: TrainTask) -> TrainResult:
        seen.append(task.context)
        return TrainResult(task.weights, 1)

    context = DeviceContext("lab-7", 3, 10, tmp_path)
    task = TrainTask(1, 0, [np.zeros(3, np.float32)], _task().config, ("w",), context)
    assert isinstance(await app.run_train(task), TrainResult)
    assert seen == [context] and seen[0].partition == 3 and seen[0].num_partitions == 10
    # Built without one, a task still has a context: the defaults of a device of one.
    assert _task().context == DeviceContext() and DeviceContext().num_partitions == 1


async def test_returned_groups_are_checked_against_the_task_layout() -> None:
    app = DeviceApp()
    returned: dict[str, object] = {}

    @app.train
    def train(task: TrainTask) -> TrainResult:
        return TrainResult(task.weights, 1, groups=returned)  # type: ignore[arg-type]

    returned.update({"control": {"nope": np.ones(3, np.float32)}})
    outcome = await app.run_train(_task())
    assert isinstance(outcome, Failure) and "in group 'control'" in outcome.message
    returned.clear()
    returned.update({"control": [np.ones(3, np.float32)]})
    outcome = await app.run_train(_task())
    assert isinstance(outcome, TrainResult) and isinstance(outcome.groups["control"], list)
    returned["control"] = [np.ones(4, np.float32)]
    outcome = await app.run_train(_task())
    assert isinstance(outcome, Failure) and outcome.reason == "shape" and "'control'" in outcome.message
    returned.clear()
    returned["weights"] = [np.ones(3, np.float32)]
    outcome = await app.run_train(_task())
    assert isinstance(outcome, Failure) and outcome.reason == "schema"
