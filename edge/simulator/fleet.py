"""Starting and stopping simulated fleets: worker processes under ``qflare.supervisor``, their queues."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.simulator.worker import TrainSpec, WorkerSpec, worker_main
from qflare.attacks import select_attackers
from qflare.kafka import KafkaSettings
from qflare.supervisor import Supervisor, SupervisorSettings


def _worker_in_own_session(spec: WorkerSpec, control: Any, stats: Any) -> None:
    # A Ctrl-C in the terminal goes to the command, which stops the workers in order;
    # a worker that caught it itself would look like a crash and be restarted.
    os.setsid()
    worker_main(spec, control, stats)


@dataclass
class WorkerProcess:
    """One simulator worker process; a restart (after a crash) reboots its devices from their keys."""

    spec: WorkerSpec
    ctx: Any
    stats: Any
    control: Any = None
    proc: Any = None
    log_path: Path | None = None  # device logs go to the command's stderr

    @property
    def name(self) -> str:
        return f"sim-worker-{self.spec.index}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else int(self.proc.pid)

    def spawn(self) -> None:
        # A fresh queue each time: a killed worker may have died holding the old one's lock.
        self.control = self.ctx.Queue()
        self.proc = self.ctx.Process(
            target=_worker_in_own_session, args=(self.spec, self.control, self.stats), daemon=True
        )
        self.proc.start()

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.exitcode

    def is_ready(self) -> bool:
        return self.proc is not None and bool(self.proc.is_alive())

    def request_stop(self) -> None:
        self.control.put(("stop", ""))

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()

    def close(self) -> None:
        pass


@dataclass
class FleetProcesses:
    ids: list[str]
    supervisor: Supervisor
    workers: list[WorkerProcess] = field(default_factory=list)
    stats: Any = None
    latest: dict[int, dict[str, Any]] = field(default_factory=dict)

    def tell(self, device: str, command: str) -> None:
        self.workers[self.ids.index(device) % len(self.workers)].control.put((command, device))

    def poll_stats(self) -> dict[int, dict[str, Any]]:
        while not self.stats.empty():
            s = self.stats.get_nowait()
            self.latest[s["worker"]] = s
        return self.latest

    def check(self) -> None:
        """Raise if a worker kept crashing and was given up."""
        self.supervisor.check()

    def stop(self) -> None:
        self.supervisor.stop()


def start_fleet(
    ids: list[str],
    tokens: list[str],
    *,
    kafka: KafkaSettings,
    processes: int,
    heartbeat_s: float,
    state_dir: Path,
    keys_dir: Path,
    seed: int,
    train: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
) -> FleetProcesses:
    """Spread ``ids`` over ``processes`` spawned workers (round-robin), restarted if they die.

    ``train`` (dataset, partition, seed, alpha) makes every device train on its shard; with
    ``app`` (``package.module:attribute``) every device runs that DeviceApp instead, its index in
    ``ids`` and the fleet size given to it as its partition.
    ``say`` receives the supervisor's lines about workers that died or were restarted.
    With ``attack`` (a ``qflare.attacks.Attack``) in ``train``, the ``attackers`` share of the
    devices (drawn from ``train["seed"]`` as ``qflare sim`` draws them) attack; built-in app only.
    """
    ctx = mp.get_context("spawn")
    attack = None if train is None else train.get("attack")
    attackers: dict[str, int] = {}
    if attack is not None and train is not None:
        attackers = {
            ids[i]: i for i in select_attackers(len(ids), train.get("attackers", 0.0), train["seed"])
        }
    fleet = FleetProcesses(ids, Supervisor(SupervisorSettings(stop_timeout_s=15), say=say), stats=ctx.Queue())
    for w in range(processes):
        mine = [(i, d, t) for i, (d, t) in enumerate(zip(ids, tokens, strict=True)) if i % processes == w]
        train_spec = None
        if train is not None:
            train_spec = TrainSpec(
                dataset=train.get("dataset", ""),
                partition=train.get("partition", "iid"),
                total_devices=len(ids),
                indices=[i for i, _, _ in mine],
                seed=train["seed"],
                alpha=train.get("alpha", 0.5),
                val_fraction=train.get("val_fraction", 0.1),
                app=train.get("app"),
                attack=attack,
                attackers=attackers,
            )
        spec = WorkerSpec(
            w,
            [(d, t) for _, d, t in mine],
            str(state_dir),
            kafka.bootstrap,
            kafka.topic_prefix,
            kafka.deployment_id,
            heartbeat_s,
            seed * 1000 + w,
            keys_dir=str(keys_dir),
            train=train_spec,
        )
        worker = WorkerProcess(spec, ctx, fleet.stats)
        fleet.supervisor.start(worker)
        fleet.workers.append(worker)
    return fleet
