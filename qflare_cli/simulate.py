"""`qflare simulate`: run a fleet of device runtimes against the real registry."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edge.shards import largest_train_size
from edge.simulator.fleet import start_fleet
from edge.simulator.observer import FleetObserver
from qflare import operator
from qflare.children import ServiceProcess
from qflare.errors import QflareError
from qflare.identity import DEFAULT_KEYS_DIR, trusted_ring
from qflare.kafka import KafkaSettings
from qflare.protocol.devices import MAX_EXAMPLES_LABEL
from qflare.supervisor import Supervisor
from qflare_cli.attack_options import ATTACK_HELP, ATTACK_PARAM_HELP, ATTACKERS_HELP, attack_option
from qflare_cli.supervised import printer
from services.registry.config import RegistrySettings

console = Console(stderr=True)


def simulate(
    devices: int = typer.Option(100, "--devices", "-n", min=1, max=20_000, help="Fleet size."),
    processes: int = typer.Option(2, min=1, max=64, help="Worker processes the fleet is spread over."),
    heartbeat_s: float = typer.Option(5.0, min=0.1, help="Heartbeat interval of every device."),
    duration_s: float = typer.Option(0.0, min=0, help="Stop after this many seconds (0: until Ctrl-C)."),
    kill: int = typer.Option(0, min=0, help="Kill this many random devices a third of the way in."),
    pause: int = typer.Option(0, min=0, help="Pause this many random devices a third of the way in..."),
    revive_at: float = typer.Option(
        0.7, min=0, max=1, help="...and revive killed/paused ones at this fraction."
    ),
    seed: int = typer.Option(0, help="Seed for device choices and chaos."),
    fleet_id: str = typer.Option("", help="Device id prefix (default: a fresh random one)."),
    spawn_registry: bool = typer.Option(
        False, help="Start a registry process for the run and measure its CPU."
    ),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object on stdout; no live table."),
    keys_dir: Path = typer.Option(DEFAULT_KEYS_DIR, envvar="QFLARE_KEYS_DIR"),
    state_dir: Path = typer.Option(Path(".qflare/sim"), help="Device keys and spools live here."),
    app: str | None = typer.Option(
        None,
        help="package.module:attribute of a DeviceApp every device runs when a round selects it "
        "(device i gets partition i of --devices); the current directory is importable. Such devices "
        "declare no dataset size, so their job needs weighting 'equal'.",
    ),
    attack: str | None = typer.Option(None, help=ATTACK_HELP + " The devices then train the built-in app."),
    attackers: float = typer.Option(0.2, min=0.0, max=1.0, help=ATTACKERS_HELP),
    attack_param: list[str] | None = typer.Option(None, "--attack-param", help=ATTACK_PARAM_HELP),
    dataset: str = typer.Option("mnist", help="With --attack: the built-in app's dataset."),
    partition: str = typer.Option("iid", help="With --attack: iid, pathological or dirichlet."),
) -> None:
    """Run N simulated devices: enrol, heartbeat, and optionally kill, pause and revive some.

    Each device has its own ML-DSA-65 key and identity; devices share one Kafka
    connection per worker process. With --app they also train with that app
    whenever a job's round selects them. Needs the stack and a running registry
    (`qflare run registry`), or pass --spawn-registry. With --attack NAME --attackers 0.2
    every device trains the built-in app on its shard when a round selects it, and that
    share of them (drawn from --seed) attacks; they are enrolled and sign like the rest.
    """
    try:
        chosen = attack_option(attack, attack_param or (), app)
    except QflareError as exc:
        console.print(f"[red]simulate refused:[/red] {exc}")
        raise typer.Exit(2) from None
    options = {**locals(), "attack": chosen}
    result = asyncio.run(_simulate(options))
    if as_json:
        typer.echo(json.dumps(result))


async def _simulate(o: dict[str, Any]) -> dict[str, Any]:
    kafka = KafkaSettings()
    fleet = o["fleet_id"] or f"sim-{uuid.uuid4().hex[:6]}"
    ids = [f"{fleet}-{i:05d}" for i in range(o["devices"])]
    keys_dir: Path = o["keys_dir"]
    registry = _Registry(kafka) if o["spawn_registry"] else None
    ident = operator.operator_identity(keys_dir)
    train = _train(o)
    labels = {"fleet": fleet}
    if train is not None and "dataset" in train:
        # The operator's approval of the devices' declared sizes: at most the largest shard.
        largest = largest_train_size(train["dataset"], train["partition"], len(ids), train["seed"])
        labels[MAX_EXAMPLES_LABEL] = str(largest)
    tokens = await operator.issue_tokens(
        kafka, ident, len(ids), 3600, labels, keys_dir=keys_dir, confirm_s=120
    )
    fleet_procs = start_fleet(
        ids,
        tokens,
        kafka=kafka,
        processes=o["processes"],
        heartbeat_s=o["heartbeat_s"],
        state_dir=o["state_dir"] / fleet,
        keys_dir=keys_dir,
        seed=o["seed"],
        train=train,
        say=printer(console),
    )
    observer = FleetObserver(
        kafka, trusted_ring(keys_dir), device_prefix=fleet, registry_group=RegistrySettings().group_id
    )
    await observer.start()
    began = time.monotonic()
    enrolled_s: float | None = None
    worker_stats: dict[int, dict[str, Any]] = {}
    cpu: list[float] = []
    rng = random.Random(o["seed"])
    chaos_done = revive_done = False
    victims: list[str] = []
    try:
        with Live(
            _table(fleet, observer, worker_stats, 0.0),
            console=console,
            refresh_per_second=2,
            transient=o["as_json"],
        ) as live:
            while o["duration_s"] == 0 or time.monotonic() - began < o["duration_s"]:
                await observer.poll()
                await observer.measure_lag()
                worker_stats.update(fleet_procs.poll_stats())
                fleet_procs.check()  # a worker or the registry that kept crashing ends the run
                if registry is not None:
                    registry.supervisor.check()
                    cpu.append(registry.cpu_percent())
                elapsed = time.monotonic() - began
                if enrolled_s is None and observer.counts()["enrolled"] >= len(ids):
                    enrolled_s = elapsed
                frac = elapsed / o["duration_s"] if o["duration_s"] else 0.0
                if not chaos_done and frac >= 1 / 3 and (o["kill"] or o["pause"]):
                    victims = rng.sample(ids, min(len(ids), o["kill"] + o["pause"]))
                    for i, device in enumerate(victims):
                        fleet_procs.tell(device, "kill" if i < o["kill"] else "pause")
                    chaos_done = True
                if chaos_done and not revive_done and frac >= o["revive_at"]:
                    for device in victims:
                        fleet_procs.tell(device, "revive")
                    revive_done = True
                live.update(_table(fleet, observer, worker_stats, elapsed))
                await asyncio.sleep(0.8)
    except KeyboardInterrupt:
        pass
    finally:
        fleet_procs.stop()
        await observer.stop()
        if registry is not None:
            registry.supervisor.stop()
    counts = observer.counts()
    failed = [s for s in worker_stats.values() if s.get("failed")]
    return {
        "devices": len(ids),
        **counts,
        "registry_lag_max": observer.lag_max,
        "registry_lag_final": observer.lag_now,
        "enrol_s": None if enrolled_s is None else round(enrolled_s, 2),
        "sent": sum(int(s["sent"]) for s in worker_stats.values()),
        "spooled": sum(int(s["spooled"]) for s in worker_stats.values()),
        "failed_replies": sum(int(s["failed"]) for s in failed),
        "last_failure": next((str(s["last_failure"]) for s in failed), None),
        "killed": o["kill"],
        "paused": o["pause"],
        "heartbeat_s": o["heartbeat_s"],
        "duration_s": round(time.monotonic() - began, 1),
        "registry_cpu_pct_mean": round(sum(cpu[2:]) / max(1, len(cpu[2:])), 1) if cpu else None,
        "registry_cpu_pct_max": round(max(cpu), 1) if cpu else None,
    }


def _train(o: dict[str, Any]) -> dict[str, Any] | None:
    """What the devices train with: the user's app, the built-in app under attack, or nothing."""
    if o["app"] is not None:
        return {"app": o["app"], "seed": o["seed"]}
    if o["attack"] is not None:
        return {
            "dataset": o["dataset"],
            "partition": o["partition"],
            "seed": o["seed"],
            "attack": o["attack"],
            "attackers": o["attackers"],
        }
    return None


class _Registry:
    """A registry for the run, under the supervisor, whose CPU is measured (across restarts)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.supervisor = Supervisor(say=printer(console))
        self.child = ServiceProcess(
            "registry",
            {"QFLARE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix},
            Path(".qflare/logs/registry-simulate.log"),
        )
        self.supervisor.start(self.child)
        self._proc: psutil.Process | None = None

    def cpu_percent(self) -> float:
        if self._proc is None or self._proc.pid != self.child.pid:
            self._proc = psutil.Process(self.child.pid)
        try:
            return float(self._proc.cpu_percent())
        except psutil.Error:  # died between two samples; the supervisor restarts it
            return 0.0


def _table(fleet: str, obs: FleetObserver, workers: dict[int, dict[str, Any]], elapsed: float) -> Table:
    c = obs.counts()
    table = Table(title=f"fleet {fleet} · {elapsed:5.0f} s", show_header=True)
    for name in ("enrolled", "online", "stale", "offline", "revoked", "deregistered"):
        table.add_column(name, justify="right")
    table.add_column("registry lag", justify="right")
    table.add_column("sent / spooled", justify="right")
    sent = sum(int(w["sent"]) for w in workers.values())
    spooled = sum(int(w["spooled"]) for w in workers.values())
    table.add_row(
        *(str(c[k]) for k in ("enrolled", "online", "stale", "offline", "revoked", "deregistered")),
        f"{obs.lag_now} (max {obs.lag_max})",
        f"{sent} / {spooled}",
    )
    return table
