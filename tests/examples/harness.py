"""Rounds of an example app in one process: the SDK's handlers, FedAvg in plain Python, no services.

This checks the examples' own code (data, local training, evaluation, what they
return) quickly and on a subset; tests/e2e/test_examples.py runs the same apps
through the real services.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

import edge.app as sdk
from edge.app import DeviceContext, EvaluateResult, EvaluateTask, Failure, TrainResult, TrainTask
from qflare.fl import TrainConfig

Model = dict[str, NDArray[Any]]


def context(root: Path, partition: int, num_partitions: int) -> DeviceContext:
    """Device ``partition``'s context, its state directory under ``root`` (created, as the runtime does)."""
    device_id = f"dev-{partition:03d}"
    state_dir = root / device_id
    state_dir.mkdir(parents=True, exist_ok=True)
    return DeviceContext(
        device_id=device_id, partition=partition, num_partitions=num_partitions, state_dir=state_dir
    )


def config(*, seed: int, epochs: int, batch_size: int, lr: float) -> TrainConfig:
    """A round's config as a FedAvg job on a stored model gives it (keys the schema lacks are left out)."""
    values: dict[str, object] = {
        "model": "example@1",
        "dataset": "mnist",
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "proximal_mu": 0.0,
        "evaluate": False,
        "evaluate_global": True,
        "train": True,
    }
    return TrainConfig.parse({k: v for k, v in values.items() if k in TrainConfig.model_fields})


def _weights(model: Model) -> list[NDArray[Any]]:
    # Copies marked read-only, as arrays decoded from a message are: an app must not write into them.
    weights = [np.array(w) for w in model.values()]
    for w in weights:
        w.flags.writeable = False
    return weights


def load_app(ref: str) -> sdk.DeviceApp:
    """``package.module:attribute``, as ``--app`` names it."""
    module, _, attr = ref.partition(":")
    app = getattr(importlib.import_module(module), attr)
    assert isinstance(app, sdk.DeviceApp), ref
    return app


def train(app: sdk.DeviceApp, round: int, model: Model, cfg: TrainConfig, ctx: DeviceContext) -> TrainResult:
    task = TrainTask(round, max(round - 1, 0), _weights(model), cfg, names=tuple(model), context=ctx)
    result = asyncio.run(app.run_train(task))
    assert not isinstance(result, Failure), result
    return result


def evaluate(
    app: sdk.DeviceApp, round: int, model: Model, cfg: TrainConfig, ctx: DeviceContext
) -> EvaluateResult:
    task = EvaluateTask(round, max(round - 1, 0), _weights(model), cfg, names=tuple(model), context=ctx)
    result = asyncio.run(app.run_evaluate(task))
    assert not isinstance(result, Failure), result
    return result


def weights_of(result: TrainResult, names: list[str]) -> list[NDArray[Any]]:
    got = result.weights
    return list(got) if isinstance(got, list) else [got[n] for n in names]


def fedavg(model: Model, results: list[TrainResult]) -> Model:
    """The example-weighted mean of the returned weights, per tensor, in the model's layout."""
    names = list(model)
    counts = np.array([r.num_examples for r in results], dtype=np.float64)
    out: Model = {}
    for i, name in enumerate(names):
        stacked = np.stack([weights_of(r, names)[i].astype(np.float64) for r in results])
        out[name] = (np.tensordot(counts, stacked, axes=1) / counts.sum()).astype(np.float32)
        assert out[name].shape == model[name].shape, name
    return out


def federated_accuracy(
    app: sdk.DeviceApp, round: int, model: Model, cfg: TrainConfig, ctxs: list[DeviceContext]
) -> float:
    """What the aggregator reports as test_accuracy: the devices' accuracies weighted by examples."""
    results = [evaluate(app, round, model, cfg, ctx) for ctx in ctxs]
    total = sum(r.num_examples for r in results)
    return sum(r.metrics["accuracy"] * r.num_examples for r in results) / total


@dataclass
class Simulation:
    """``rounds`` of train on every device -> FedAvg -> federated evaluation of the new version."""

    app: sdk.DeviceApp
    cfg: TrainConfig
    ctxs: list[DeviceContext]
    model: Model
    #: Federated accuracy of version 0, then of each round's new version.
    accuracies: list[float]
    #: Every round's train results, by device.
    results: list[list[TrainResult]]
    #: The global model each round started from.
    sent: list[Model]


def simulate(
    app_ref: str, initial: Model, cfg: TrainConfig, root: Path, *, devices: int, rounds: int
) -> Simulation:
    app = load_app(app_ref)
    ctxs = [context(root, i, devices) for i in range(devices)]
    sim = Simulation(app, cfg, ctxs, initial, [federated_accuracy(app, 0, initial, cfg, ctxs)], [], [])
    for rnd in range(1, rounds + 1):
        sim.sent.append(sim.model)
        results = [train(app, rnd, sim.model, cfg, ctx) for ctx in ctxs]
        sim.results.append(results)
        sim.model = fedavg(sim.model, results)
        sim.accuracies.append(federated_accuracy(app, rnd, sim.model, cfg, ctxs))
    return sim
