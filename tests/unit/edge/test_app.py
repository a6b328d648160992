"""The device SDK: decorators register handlers; failures come back as data."""

from __future__ import annotations

import numpy as np

from edge.app import DeviceApp, Failure, TrainResult, TrainTask
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
        return TrainResult([np.array([np.nan], np.float32)], 1)

    outcome = await app.run_train(_task())
    assert isinstance(outcome, Failure) and outcome.reason == "non_finite"
