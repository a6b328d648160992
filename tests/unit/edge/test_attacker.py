"""Attacker devices of the simulated fleet: signed crafted updates, colluders recomputed (no Kafka).

The device's replies are read back from its spool and decoded, signature checked, as the
aggregator would read them: an attacker is an ordinary device whose update is crafted.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.app import DeviceContext, TrainResult, TrainTask
from edge.attacker import Colluders, Roster, Tamper
from edge.builtin import mnist_app
from edge.link import Link
from edge.runtime import DeviceConfig, DeviceRuntime, load_or_create_key
from edge.spool import Spool
from edge.training import train_and_send
from qflare.attacks import Attack, parse_attack
from qflare.fl import FedAvg, JobSpec
from qflare.ml import init_weights, tensor_names
from qflare.ml.train import train_local
from qflare.protocol import Decoder, KeyRing, Reassembler
from qflare.protocol.channel import DEFAULT_DEPLOYMENT
from qflare.protocol.topics import topics
from qflare.protocol.training import ModelUpdate, RoundTask

torch.set_num_threads(1)
NAMES = tuple(tensor_names("2nn"))
TOPICS = topics("t.", deployment=DEFAULT_DEPLOYMENT)
SEED = 5
IDS = ("dev-0", "dev-1", "dev-2")


def _shard(index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 10, 20).astype(np.int64)


def _device(root: Path, index: int, attack: Attack | None, roster: Roster) -> tuple[DeviceRuntime, KeyRing]:
    device_id = IDS[index]
    key = load_or_create_key(root / f"{device_id}.key")
    link = Link(Spool(root / f"{device_id}.spool"), lambda: None)  # never started: records stay spooled
    device = DeviceRuntime(DeviceConfig(device_id), key, link, TOPICS)
    tamper = None
    if attack is not None:
        attackers = {"dev-0": 0, "dev-2": 2}
        tamper = Tamper(attack, index, attackers, SEED, roster, Colluders(_shard, SEED))
    x, y = _shard(index)
    device.app = mnist_app(x, y, seed=SEED + index, tamper=tamper)
    device.context = DeviceContext(device_id, index, 3, root / device_id)
    ring = KeyRing()
    ring.add(device_id, key.public_key)
    return device, ring


def _task() -> RoundTask:
    config = FedAvg(JobSpec(lr=0.05, batch_size=10)).train_config(1).to_config()
    return RoundTask("job-1", 1, 0, "x", IDS, int(time.time() * 1000) + 60_000, 1, 1, config)


def _sent(device: DeviceRuntime, ring: KeyRing) -> ModelUpdate:
    decoder = Decoder(ring, deployment=TOPICS.updates.channel.deployment, max_age_ms=None)
    reassembler = Reassembler(decoder)
    out = []
    for record in device.link.spool.peek(1000):
        msg = reassembler.feed(decoder.decode(record.value, record.topic))
        if msg is not None and isinstance(msg.body, ModelUpdate):
            out.append(msg.body)
    (update,) = out
    return update


async def _run(root: Path, index: int, attack: Attack | None) -> ModelUpdate:
    roster = Roster()
    roster.note("job-1", 1, IDS)
    device, ring = _device(root / ("bad" if attack else "good"), index, attack, roster)
    result = await train_and_send(device, _task(), init_weights("2nn", 0), NAMES)
    assert isinstance(result, TrainResult)
    return _sent(device, ring)


async def test_a_sign_flipping_device_signs_global_minus_its_update(tmp_path: Path) -> None:
    g = init_weights("2nn", 0)
    honest = await _run(tmp_path, 0, None)
    bad = await _run(tmp_path, 0, parse_attack("sign_flip"))
    assert bad.device_id == "dev-0" and bad.num_examples == honest.num_examples == 20
    for w, h, b in zip(g, honest.tensors, bad.tensors, strict=True):
        np.testing.assert_allclose(b.array, 2 * w - h.array, atol=1e-6)


async def test_the_liar_claims_its_count_on_the_wire(tmp_path: Path) -> None:
    bad = await _run(tmp_path, 0, parse_attack("num_examples_liar", {"claim": 1_000_000}))
    assert bad.num_examples == 1_000_000


def test_a_colluder_recomputes_another_attackers_honest_update(tmp_path: Path) -> None:
    # What dev-2 itself would train: train_local with its shard and the app's round seed.
    task = TrainTask(1, 0, init_weights("2nn", 0), FedAvg(JobSpec(lr=0.05, batch_size=10)).train_config(1))
    got = Colluders(_shard, SEED).honest(task, 2)
    x, y = _shard(2)
    want = train_local("2nn", task.weights, x, y, 1, 10, 0.05, seed=(SEED + 2) * 100_003 + 1)
    for a, b in zip(got, want.weights, strict=True):
        np.testing.assert_array_equal(a, b)


async def test_ipm_colluders_send_minus_epsilon_times_their_mean(tmp_path: Path) -> None:
    g = init_weights("2nn", 0)
    # Honest updates of the two attackers (dev-0, dev-2); dev-1 is honest and not a colluder.
    h0 = await _run(tmp_path / "h0", 0, None)
    h2 = await _run(tmp_path / "h2", 2, None)
    bad = await _run(tmp_path, 0, parse_attack("ipm", {"epsilon": 2}))
    for w, a, b, sent in zip(g, h0.tensors, h2.tensors, bad.tensors, strict=True):
        mean = ((a.array - w) + (b.array - w)) / 2
        np.testing.assert_allclose(sent.array, w - 2 * mean, atol=1e-5)


@pytest.mark.parametrize("name", ["label_flip", "backdoor"])
def test_data_attacks_leave_the_trained_result_alone_unless_boosted(name: str) -> None:
    roster = Roster()
    tamper = Tamper(parse_attack(name), 0, {"dev-0": 0}, SEED, roster, Colluders(_shard, SEED))
    g = init_weights("2nn", 0)
    task = TrainTask(1, 0, g, FedAvg(JobSpec()).train_config(1), NAMES)
    trained = TrainResult([w + 1 for w in g], 9, {"loss": 1.0})
    out = tamper(task, trained)
    assert out.num_examples == 9 and out.metrics == {"loss": 1.0}
    assert isinstance(out.weights, list)
    for a, b in zip(out.weights, [w + 1 for w in g], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
