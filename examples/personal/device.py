"""The device side of the personal example: ``qflare-edge run --app examples.personal.device:app``.

The model's head (``PERSONAL``) is this device's own. ``train`` starts from the
global body and the head this device kept, trains both on local data, saves the
head in ``task.context.state_dir`` (a directory of the device's that survives
restarts) and returns the trained body with the head *exactly as received*. So
the federation averages bodies only: every device sends the same head values
back, their average is those values again, and nothing the head learnt from
local data ever leaves the device. ``evaluate`` scores the global body with this
device's own head: the personalised model the device actually uses.

The first time (no saved head), a device starts from the global head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge.app import DeviceApp, EvaluateResult, EvaluateTask, TrainResult, TrainTask
from examples.personal.model import PERSONAL, BodyHead
from examples.personal.state import load_head, save_head
from examples.vision.data import Split, split
from examples.vision.model import arrays_of, load_arrays

app = DeviceApp()


class PersonalSettings(BaseSettings):
    """Fashion-MNIST as in the vision example, but strongly non-IID by default: few classes a device."""

    model_config = SettingsConfigDict(env_prefix="QFLARE_PERSONAL_")

    examples_per_device: int = Field(0, ge=0)
    alpha: float = Field(0.1, gt=0)
    holdout_fraction: float = Field(0.1, gt=0, lt=1)


def _data(partition: int, num_partitions: int, seed: int) -> Split:
    s = PersonalSettings()
    return split(partition, num_partitions, seed, s.examples_per_device, s.alpha, s.holdout_fraction)


def _model(names: tuple[str, ...], weights: list[NDArray[np.float32]], state_dir: Path) -> BodyHead:
    """The global model, with this device's own head in place of the global one once it has one."""
    model = BodyHead()
    load_arrays(model, names, weights)
    head = load_head(state_dir)
    if head is not None:
        model.load_state_dict(head, strict=False)
    return model


@app.train
def train(task: TrainTask) -> TrainResult:
    ctx, cfg = task.context, task.config
    data = _data(ctx.partition, ctx.num_partitions, cfg.seed)
    model = _model(task.names, task.weights, ctx.state_dir)
    optimiser = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    batch = cfg.batch_size or len(y)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + task.round * 1009 + ctx.partition)
    total, seen = 0.0, 0
    for _ in range(cfg.epochs):
        total, seen = 0.0, 0
        for idx in torch.randperm(len(y), generator=gen).split(batch):  # type: ignore[no-untyped-call]
            optimiser.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
    save_head(model.state_dict(), ctx.state_dir)
    trained = arrays_of(model, task.names)
    # The personal tensors go back as they came: the received global values, untouched.
    received = dict(zip(task.names, task.weights, strict=True))
    weights = [received[n] if n in PERSONAL else w for n, w in zip(task.names, trained, strict=True)]
    return TrainResult(weights, num_examples=len(y), metrics={"loss": total / seen})


@app.evaluate
def evaluate(task: EvaluateTask) -> EvaluateResult:
    ctx = task.context
    data = _data(ctx.partition, ctx.num_partitions, task.config.seed)
    model = _model(task.names, task.weights, ctx.state_dir)
    with torch.no_grad():
        logits = model(torch.from_numpy(data.test_x))
        loss = float(F.cross_entropy(logits, torch.from_numpy(data.test_y)))
        accuracy = float(np.mean(logits.argmax(1).numpy() == data.test_y))
    return EvaluateResult(num_examples=len(data.test_y), loss=loss, metrics={"accuracy": accuracy})
