"""Starting and stopping simulated fleets: worker processes, their control and stats queues."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.simulator.worker import TrainSpec, WorkerSpec, worker_main
from qflare.kafka import KafkaSettings


@dataclass
class FleetProcesses:
    ids: list[str]
    workers: list[Any] = field(default_factory=list)
    control: list[Any] = field(default_factory=list)
    stats: Any = None
    latest: dict[int, dict[str, Any]] = field(default_factory=dict)

    def tell(self, device: str, command: str) -> None:
        self.control[self.ids.index(device) % len(self.control)].put((command, device))

    def poll_stats(self) -> dict[int, dict[str, Any]]:
        while not self.stats.empty():
            s = self.stats.get_nowait()
            self.latest[s["worker"]] = s
        return self.latest

    def stop(self, timeout_s: float = 15) -> None:
        for q in self.control:
            q.put(("stop", ""))
        for proc in self.workers:
            proc.join(timeout=timeout_s)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


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
) -> FleetProcesses:
    """Spread ``ids`` over ``processes`` spawned workers (round-robin).

    ``train`` (dataset, partition, seed, alpha) makes every device train on its shard.
    """
    ctx = mp.get_context("spawn")
    fleet = FleetProcesses(ids, stats=ctx.Queue())
    for w in range(processes):
        mine = [(i, d, t) for i, (d, t) in enumerate(zip(ids, tokens, strict=True)) if i % processes == w]
        train_spec = None
        if train is not None:
            train_spec = TrainSpec(
                dataset=train["dataset"],
                partition=train["partition"],
                total_devices=len(ids),
                indices=[i for i, _, _ in mine],
                seed=train["seed"],
                alpha=train.get("alpha", 0.5),
                val_fraction=train.get("val_fraction", 0.1),
            )
        spec = WorkerSpec(
            w,
            [(d, t) for _, d, t in mine],
            str(state_dir),
            kafka.bootstrap,
            kafka.topic_prefix,
            heartbeat_s,
            seed * 1000 + w,
            keys_dir=str(keys_dir),
            train=train_spec,
        )
        control = ctx.Queue()
        proc = ctx.Process(target=worker_main, args=(spec, control, fleet.stats), daemon=True)
        proc.start()
        fleet.workers.append(proc)
        fleet.control.append(control)
    return fleet
