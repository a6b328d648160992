"""The device side of the vision example: ``qflare-edge run --app examples.vision.device:app``.

``train`` loads the global model into the user's CNN, runs local SGD on this
device's share of Fashion-MNIST and returns the weights in the job's layout.
``evaluate`` scores the global model it is given on the device's held-out
examples: with ``evaluation: federated`` (the default for an imported model) the
aggregator combines these by example count into the round's ``test_accuracy``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edge.app import DeviceApp, EvaluateResult, EvaluateTask, TrainResult, TrainTask
from examples.vision.data import device_split
from examples.vision.model import SmallCNN, arrays_of, load_arrays

app = DeviceApp()


@app.train
def train(task: TrainTask) -> TrainResult:
    ctx, cfg = task.context, task.config
    data = device_split(ctx.partition, ctx.num_partitions, cfg.seed)
    model = SmallCNN()
    load_arrays(model, task.names, task.weights)
    optimiser = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    batch = cfg.batch_size or len(y)  # 0: the whole local dataset per step
    # Each device and round draws its own example order, reproducibly.
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + task.round * 1009 + ctx.partition)
    model.train()
    total, seen = 0.0, 0
    for _ in range(cfg.epochs):
        total, seen = 0.0, 0
        for idx in torch.randperm(len(y), generator=gen).split(batch):  # type: ignore[no-untyped-call]
            optimiser.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
    # "loss" is the key the aggregator averages into the round's train_loss.
    return TrainResult(arrays_of(model, task.names), num_examples=len(y), metrics={"loss": total / seen})


@app.evaluate
def evaluate(task: EvaluateTask) -> EvaluateResult:
    ctx = task.context
    data = device_split(ctx.partition, ctx.num_partitions, task.config.seed)
    model = SmallCNN()
    load_arrays(model, task.names, task.weights)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.test_x))
        y = torch.from_numpy(data.test_y)
        loss = float(F.cross_entropy(logits, y))
        accuracy = float(np.mean(logits.argmax(1).numpy() == data.test_y))
    return EvaluateResult(num_examples=len(y), loss=loss, metrics={"accuracy": accuracy})
