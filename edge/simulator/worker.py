"""One simulator process: a slice of the fleet as asyncio tasks sharing one Kafka link.

Each simulated device has its own key and identity and signs its own messages;
only the connection (and its spool) is shared, because a thousand producer
connections on a 2-core machine would measure the simulator, not the platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import random
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import structlog

from edge.app import DeviceContext
from edge.attacker import Roster
from edge.enrolment import EnrollmentResults
from edge.link import Link
from edge.runtime import DeviceConfig, DeviceRuntime, load_or_create_key
from edge.shards import ALPHA, VAL_FRACTION, builtin_shards, split, train_size
from edge.spool import Spool
from qflare.attacks import Attack
from qflare.identity import DEFAULT_KEYS_DIR, TrustedKeys
from qflare.kafka import KafkaSettings, make_producer
from qflare.telemetry import configure_logging

log = structlog.get_logger("qflare.edge.simulator")


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    devices: list[tuple[str, str]]  # (device id, enrolment token)
    state_dir: str
    bootstrap: str
    topic_prefix: str
    #: Bound into every signature (``QFLARE_KAFKA_DEPLOYMENT_ID``).
    deployment_id: str
    heartbeat_interval_s: float
    seed: int
    keys_dir: str = str(DEFAULT_KEYS_DIR)
    #: Training: each device trains on its own shard of the dataset (None: heartbeats only).
    train: TrainSpec | None = None


@dataclass(frozen=True)
class TrainSpec:
    #: The built-in app's dataset and partitioner (unused with ``app``).
    dataset: str
    partition: str
    total_devices: int
    #: Global index of each of this worker's devices, in ``devices`` order.
    indices: list[int]
    seed: int
    alpha: float = ALPHA
    #: Share of each device's shard held out as its local validation split.
    val_fraction: float = VAL_FRACTION
    #: ``package.module:attribute`` of the user's DeviceApp (None: the built-in app on ``dataset``).
    app: str | None = None
    #: Attackers (built-in app only): the attack, and every attacker's device id -> fleet index.
    attack: Attack | None = None
    attackers: dict[str, int] = field(default_factory=dict)


def worker_main(spec: WorkerSpec, control: Queue[Any], stats: Queue[Any]) -> None:
    """Process entry point (spawned): run until told to stop."""
    # Device logs are JSON on stderr (stdout carries the CLI's own output, e.g. --json),
    # and each worker process exports its devices' spans.
    configure_logging("edge", level="warning")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(spec, control, stats))


async def _run(spec: WorkerSpec, control: Queue[Any], stats: Queue[Any]) -> None:
    # Devices log in as the one device principal unless told otherwise (QFLARE_KAFKA_USERNAME).
    kafka = KafkaSettings(
        bootstrap=spec.bootstrap,
        topic_prefix=spec.topic_prefix,
        deployment_id=spec.deployment_id,
        username=os.environ.get("QFLARE_KAFKA_USERNAME", "device"),
    )
    tset = kafka.topics
    state = Path(spec.state_dir)
    spool = Spool(state / f"worker-{spec.index}.spool")
    link = Link(spool, lambda: make_producer(kafka, request_timeout_ms=10_000, linger_ms=20))
    await link.start()
    # Started before any device enrols, so no answer of the registry is missed.
    results = EnrollmentResults(kafka, tset, TrustedKeys(Path(spec.keys_dir)))
    await results.start()
    rng = random.Random(spec.seed)
    # What each device trains on is what it declares at enrolment, attackers included (the
    # num_examples liar then claims more than it declared, and is refused).
    sizes = declared_sizes(spec)
    fleet: dict[str, DeviceRuntime] = {}
    for device_id, token in spec.devices:
        key = load_or_create_key(state / "keys" / f"{device_id}.key")
        cfg = DeviceConfig(
            device_id,
            token,
            {"hardware": rng.choice(["cpu-small", "cpu-large"]), "sim_worker": str(spec.index)},
            spec.heartbeat_interval_s,
            scope=kafka.deployment_id,
            num_examples=sizes.get(device_id),
        )
        fleet[device_id] = DeviceRuntime(cfg, key, link, tset)
    if spec.train is not None:
        trainer = asyncio.create_task(train_forever(spec, fleet, kafka))
    tasks = {
        d: asyncio.create_task(r.run(rng=random.Random(rng.random()), results=results))
        for d, r in fleet.items()
    }
    running = True
    while running:
        await asyncio.sleep(0.5)
        link.check()  # a refusal retrying cannot fix ends the worker, not only its link
        while True:
            try:
                command, device_id = control.get_nowait()
            except queue.Empty:
                break
            if command == "stop":
                running = False
            elif command in ("kill", "pause", "revive", "deregister") and device_id in fleet:
                _apply(command, fleet[device_id], tasks)
        stats.put(
            {
                "worker": spec.index,
                "sent": link.sent,
                "spooled": len(spool),
                "reconnects": link.reconnects,
                "connected": link.connected,
                "killed": sum(1 for r in fleet.values() if not r.alive),
                "paused": sum(1 for r in fleet.values() if r.paused and r.alive),
                "refused": sum(
                    1 for r in fleet.values() if r.enrollment is not None and not r.enrollment.accepted
                ),
                "failed": sum(r.failures for r in fleet.values()),
                "last_failure": next(
                    (str(r.last_failure.message) for r in fleet.values() if r.last_failure is not None), ""
                ),
            }
        )
    for task in tasks.values():
        task.cancel()
    if spec.train is not None:
        trainer.cancel()
    await results.stop()
    await link.stop()
    spool.close()


def declared_sizes(spec: WorkerSpec) -> dict[str, int]:
    """Each device's training-split size on the built-in dataset (empty: no built-in training)."""
    t = spec.train
    if t is None or t.app is not None or not t.dataset:
        return {}
    _, shards = builtin_shards(t.dataset, t.partition, t.total_devices, t.seed, t.alpha)
    return {
        device_id: train_size(shards[index], t.val_fraction)
        for (device_id, _), index in zip(spec.devices, t.indices, strict=True)
    }


def _apply(command: str, device: DeviceRuntime, tasks: dict[str, asyncio.Task[None]]) -> None:
    if command == "kill":
        device.alive = False
        tasks[device.device_id].cancel()
    elif command == "pause":
        device.paused = True
    elif command == "revive":
        device.paused = False
        if not device.alive:
            device.alive = True
            tasks[device.device_id] = asyncio.create_task(device.run())
    elif command == "deregister":
        device.deregister("simulated leave")


async def train_forever(spec: WorkerSpec, fleet: dict[str, DeviceRuntime], kafka: KafkaSettings) -> None:
    """Give each device its app and context, and train whenever a round task names it."""
    from edge.training import RoundFollower, train_and_send
    from qflare.identity import TrustedKeys

    assert spec.train is not None
    t = spec.train
    for (device_id, _), index in zip(spec.devices, t.indices, strict=True):
        own = Path(spec.state_dir) / "app" / device_id
        own.mkdir(parents=True, exist_ok=True)
        fleet[device_id].context = DeviceContext(device_id, index, t.total_devices, own)
    roster = Roster()  # the round's selected devices, for colluding attackers
    if t.app is not None:
        _install_user_app(t.app, spec, fleet)
    else:
        _install_builtin_app(t, spec, fleet, roster)
    follower = RoundFollower(kafka, kafka.topics, TrustedKeys(Path(spec.keys_dir)))
    reader = asyncio.create_task(follower.run())
    done: set[tuple[str, int]] = set()
    try:
        while True:
            task = await follower.tasks.get()
            mine = [d for d in task.devices if d in fleet and fleet[d].alive and not fleet[d].paused]
            if (task.job_id, task.round) in done or not mine:
                continue
            done.add((task.job_id, task.round))
            roster.note(task.job_id, task.round, task.devices)
            left_s = task.deadline_ms / 1000 - time.time()
            model = await follower.weights(task.job_id, task.model_version, max(0.0, left_s))
            if model is None:
                continue  # the model never arrived before the deadline
            names, weights = model
            for device_id in mine:
                if time.time() * 1000 > task.deadline_ms:
                    break  # too late: the aggregator would drop it anyway
                await train_and_send(fleet[device_id], task, weights, names)
    finally:
        reader.cancel()


def _install_user_app(ref: str, spec: WorkerSpec, fleet: dict[str, DeviceRuntime]) -> None:
    """The user's app for every device here; one that cannot load answers each task with its error."""
    from edge.loader import app_or_failure

    app, error = app_or_failure(ref)
    if error is not None:
        log.error("device app not loaded; every task gets a failed reply", app=ref, error=str(error))
    for device_id, _ in spec.devices:
        fleet[device_id].app = app
    if "torch" in sys.modules:  # the app trains with torch: one thread per worker, as the built-in app
        sys.modules["torch"].set_num_threads(1)


def _install_builtin_app(
    t: TrainSpec, spec: WorkerSpec, fleet: dict[str, DeviceRuntime], roster: Roster
) -> None:
    """Each device trains the built-in app on its shard of a built-in dataset; attackers attack."""
    import torch

    from edge.attacker import Colluders, Tamper
    from edge.builtin import mnist_app
    from qflare.attacks import data_rng, poison_data

    # Two cores are shared by every worker and the services: one thread each.
    torch.set_num_threads(1)
    data, shards = builtin_shards(t.dataset, t.partition, t.total_devices, t.seed, t.alpha)

    def train_split(index: int) -> Any:
        return split(shards[index], t.val_fraction)[0]

    colluders = Colluders(
        lambda i: (data.train_images[train_split(i)], data.train_labels[train_split(i)]), t.seed
    )
    for (device_id, _), index in zip(spec.devices, t.indices, strict=True):
        train, val = split(shards[index], t.val_fraction)
        images, labels = data.train_images[train], data.train_labels[train]
        tamper = None
        if t.attack is not None and device_id in t.attackers:
            images, labels = poison_data(t.attack, images, labels, data_rng(t.seed, index))
            tamper = Tamper(t.attack, index, t.attackers, t.seed, roster, colluders)
        fleet[device_id].app = mnist_app(
            images,
            labels,
            seed=t.seed + index,
            val_images=data.train_images[val],
            val_labels=data.train_labels[val],
            tamper=tamper,
        )
