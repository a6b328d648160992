"""The device side of the tabular example: ``qflare-edge run --app examples.tabular.device:app``.

Plain numpy from end to end: the SDK hands the global model over as numpy
arrays with their names, and takes numpy arrays back. No torch is imported.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edge.app import DeviceApp, EvaluateResult, EvaluateTask, TrainResult, TrainTask
from examples.tabular.data import device_split
from examples.tabular.model import Params, loss_and_accuracy, sgd

app = DeviceApp()


def _params(names: tuple[str, ...], weights: list[NDArray[np.float32]]) -> Params:
    return {name: np.asarray(w, dtype=np.float32) for name, w in zip(names, weights, strict=True)}


@app.train
def train(task: TrainTask) -> TrainResult:
    ctx, cfg = task.context, task.config
    data = device_split(ctx.partition, ctx.num_partitions, cfg.seed)
    params, loss = sgd(
        _params(task.names, task.weights),
        data.train_x,
        data.train_y,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed * 1_000_003 + task.round * 1009 + ctx.partition,
    )
    # A dict keyed by the task's names is as good as a list in their order; a list here.
    return TrainResult(
        [params[n] for n in task.names], num_examples=len(data.train_y), metrics={"loss": loss}
    )


@app.evaluate
def evaluate(task: EvaluateTask) -> EvaluateResult:
    ctx = task.context
    data = device_split(ctx.partition, ctx.num_partitions, task.config.seed)
    loss, accuracy = loss_and_accuracy(_params(task.names, task.weights), data.test_x, data.test_y)
    return EvaluateResult(num_examples=len(data.test_y), loss=loss, metrics={"accuracy": accuracy})
