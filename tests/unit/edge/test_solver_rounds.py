"""The device runtime with the built-in app and its solvers, through the durable outbox (no Kafka).

A device's replies are read back from its spool and decoded as the aggregator would:
the wire order of the groups, ``local_steps``, FedPer's shared tensors only, and a
SCAFFOLD device that restarts (a new app and runtime over the same state directory)
keeping its c_i and never answering a round twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.app import DeviceApp, DeviceContext, Failure, TrainResult, TrainTask
from edge.builtin import mnist_app
from edge.link import Link
from edge.runtime import DeviceConfig, DeviceRuntime, load_or_create_key
from edge.solver_state import load_state, state_path
from edge.spool import Spool
from edge.training import train_and_send
from qflare.fl import FedAvg, JobSpec
from qflare.ml import init_weights, tensor_names
from qflare.protocol import Decoder, KeyRing, Reassembler, Tensor
from qflare.protocol.channel import DEFAULT_DEPLOYMENT
from qflare.protocol.topics import topics
from qflare.protocol.training import ModelUpdate, RoundTask

NAMES = tuple(tensor_names("2nn"))
TOPICS = topics("t.", deployment=DEFAULT_DEPLOYMENT)
DEVICE = "dev-1"


def _device(root: Path) -> tuple[DeviceRuntime, KeyRing]:
    """A device over ``root`` (key, spool, app state) with the built-in app; a new call is a restart."""
    key = load_or_create_key(root / "device.key")
    link = Link(Spool(root / "device.spool"), lambda: None)  # never started: records stay spooled
    device = DeviceRuntime(DeviceConfig(DEVICE), key, link, TOPICS)
    rng = np.random.default_rng(0)
    x, y = rng.random((24, 28, 28), dtype=np.float32), rng.integers(0, 10, 24).astype(np.int64)
    vx, vy = rng.random((8, 28, 28), dtype=np.float32), rng.integers(0, 10, 8).astype(np.int64)
    device.app = mnist_app(x, y, seed=3, val_images=vx, val_labels=vy)
    device.context = DeviceContext(DEVICE, 0, 1, root / "app")
    ring = KeyRing()
    ring.add(DEVICE, key.public_key)
    return device, ring


def _task(round: int, **config: Any) -> RoundTask:
    base = FedAvg(JobSpec(lr=0.05, batch_size=8)).train_config(round).to_config()
    base.update(config)
    deadline = int(time.time() * 1000) + 60_000
    return RoundTask("job-1", round, round - 1, "x", (DEVICE,), deadline, 1, 1, base)


def _model(control: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """A model record's tensors: the weights, then ``control/<name>`` when given."""
    weights = init_weights("2nn", 0)
    if control is None:
        return weights, NAMES
    return weights + list(control), NAMES + tuple(f"control/{n}" for n in NAMES)


def _sent(device: DeviceRuntime, ring: KeyRing) -> list[ModelUpdate]:
    decoder = Decoder(ring, deployment=TOPICS.updates.channel.deployment, max_age_ms=None)
    reassembler = Reassembler(decoder)
    out = []
    for record in device.link.spool.peek(1000):
        msg = reassembler.feed(decoder.decode(record.value, record.topic))
        if msg is not None and isinstance(msg.body, ModelUpdate):
            out.append(msg.body)
    return out


def _groups(update: ModelUpdate) -> dict[str, list[Tensor]]:
    out: dict[str, list[Tensor]] = {}
    for t in update.tensors:
        group = t.name.split("/")[0] if "/" in t.name else "weights"
        out.setdefault(group, []).append(t)
    return out


async def test_a_plain_round_sends_weights_and_local_steps(tmp_path: Path) -> None:
    device, ring = _device(tmp_path)
    weights, names = _model()
    assert isinstance(await train_and_send(device, _task(1), weights, names), TrainResult)
    (update,) = _sent(device, ring)
    assert tuple(t.name for t in update.tensors) == NAMES
    assert update.metrics["local_steps"] == 3.0  # 24 examples in batches of 8, one epoch
    # Plain FedAvg keeps no solver state.
    assert not state_path(device.context.state_dir, "job-1").exists()


async def test_scaffold_device_restarts_and_keeps_its_control_variate(tmp_path: Path) -> None:
    zeros = [np.zeros_like(w) for w in init_weights("2nn", 0)]
    device, ring = _device(tmp_path)
    weights, names = _model(zeros)
    await train_and_send(device, _task(1, scaffold=True), weights, names)
    (first,) = _sent(device, ring)
    # Wire order: the weights in layout order, then control/<name> in layout order.
    assert tuple(t.name for t in first.tensors) == NAMES + tuple(f"control/{n}" for n in NAMES)
    stored = load_state(state_path(device.context.state_dir, "job-1"))
    assert stored.round == 1 and stored.control is not None
    sent_dc = [t.array for t in _groups(first)["control"]]
    for dc, ci in zip(sent_dc, stored.control, strict=True):
        np.testing.assert_array_equal(dc, ci)  # c_i was 0, so c_i+ is the dc it sent

    # A restart: a new runtime and app over the same state directory and spool.
    device.link.spool.close()
    device, ring = _device(tmp_path)
    # The round it already answered comes again (replayed from the start): nothing is sent.
    before = len(device.link.spool)
    await train_and_send(device, _task(1, scaffold=True), weights, names)
    assert len(device.link.spool) == before
    # The next round trains from the stored c_i: dc = c_i+ - c_i with c_i the stored one.
    c = [np.full_like(w, 0.01) for w in zeros]
    weights2, names2 = _model(c)
    await train_and_send(device, _task(2, scaffold=True), weights2, names2)
    second = _sent(device, ring)[-1]
    after = load_state(state_path(device.context.state_dir, "job-1"))
    assert after.round == 2 and after.control is not None
    dc2 = [t.array for t in _groups(second)["control"]]
    for new, old, dc in zip(after.control, stored.control, dc2, strict=True):
        np.testing.assert_allclose(new - old, dc, atol=1e-5)
    assert second.metrics["local_steps"] == 3.0


@pytest.mark.parametrize("config", [{"personal": r"fc3\..*"}, {"ditto_lambda": 0.1}])
async def test_personalised_devices_report_their_own_model(tmp_path: Path, config: dict[str, Any]) -> None:
    device, ring = _device(tmp_path)
    weights, names = _model()
    await train_and_send(device, _task(1, **config), weights, names)
    (update,) = _sent(device, ring)
    shared = NAMES[:4] if "personal" in config else NAMES
    assert tuple(t.name for t in update.tensors) == shared  # FedPer's head never leaves the device
    assert update.metrics["personal_examples"] == 8.0
    assert 0.0 <= update.metrics["personal_accuracy"] <= 1.0 and update.metrics["personal_loss"] > 0
    stored = load_state(state_path(device.context.state_dir, "job-1"))
    assert stored.round == 1
    assert set(stored.personal) == ({"fc3.weight", "fc3.bias"} if "personal" in config else set())
    assert (stored.ditto is not None) == ("ditto_lambda" in config)


async def test_a_control_group_that_does_not_match_the_weights_is_a_failed_reply(tmp_path: Path) -> None:
    device, ring = _device(tmp_path)
    weights = init_weights("2nn", 0)
    result = await train_and_send(
        device, _task(1, scaffold=True), [*weights, np.zeros(3, np.float32)], (*NAMES, "control/other")
    )
    assert isinstance(result, Failure)
    assert result.reason == "schema" and "control" in result.message
    assert _sent(device, ring) == []  # a round_failure was sent, not an update
    assert not state_path(device.context.state_dir, "job-1").exists()


async def test_commit_runs_only_for_an_update_that_is_sent(tmp_path: Path) -> None:
    device, ring = _device(tmp_path)
    committed: list[int] = []
    app = DeviceApp()
    bad = {"nan": False, "raise": False}

    @app.train
    def train(task: TrainTask) -> TrainResult:
        def commit() -> None:
            if bad["raise"]:
                raise OSError("disk full")
            committed.append(task.round)

        out = [w + (np.float32(np.nan) if bad["nan"] else np.float32(0)) for w in task.weights]
        return TrainResult(out, 5, groups={"control": task.weights}, commit=commit)

    device.app = app
    weights, names = _model()
    assert isinstance(await train_and_send(device, _task(1), weights, names), TrainResult)
    (update,) = _sent(device, ring)
    assert committed == [1] and update.metrics["local_steps"] == 1.0  # 5 examples, batch 8, one epoch
    assert [t.name for t in update.tensors][len(NAMES)] == f"control/{NAMES[0]}"
    bad["nan"] = True
    assert isinstance(await train_and_send(device, _task(2), weights, names), Failure)
    bad.update(nan=False, **{"raise": True})
    failure = await train_and_send(device, _task(3), weights, names)
    assert isinstance(failure, Failure) and "disk full" in failure.message
    assert committed == [1] and len(_sent(device, ring)) == 1  # rounds 2 and 3: failed replies only
