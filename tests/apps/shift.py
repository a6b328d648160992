"""A numpy-only device app: every tensor of the global model plus a constant, no torch anywhere.

It also writes what its context told it into its state directory, so a test can
check that each device got its own partition, the fleet size and a durable directory.
"""

from __future__ import annotations

import json

import numpy as np

from edge.app import DeviceApp, TrainResult, TrainTask

SHIFT = 0.001

app = DeviceApp()


@app.train
def train(task: TrainTask) -> TrainResult:
    ctx = task.context
    seen = {
        "device_id": ctx.device_id,
        "partition": ctx.partition,
        "num_partitions": ctx.num_partitions,
        "names": list(task.names),
        "round": task.round,
    }
    (ctx.state_dir / f"round-{task.round}.json").write_text(json.dumps(seen))
    # A dict keyed by the task's names is as good as a list in their order.
    shifted = {n: w + np.float32(SHIFT) for n, w in zip(task.names, task.weights, strict=True)}
    return TrainResult(shifted, num_examples=10 * (ctx.partition + 1), metrics={"loss": 1.0})
