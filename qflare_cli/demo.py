"""`qflare demo`: the main job, end to end on this machine.

Starts the stack (if it is not up) and the four services, enrols a simulated
fleet that trains on its own shards of MNIST, runs a federated job through the
scheduler and aggregator, prints each round, and stops everything it started.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from devstack import launcher
from devstack.settings import StackSettings
from edge.simulator.fleet import FleetProcesses, start_fleet
from edge.simulator.observer import FleetObserver, wait_until
from qflare import localstack, operator, poison
from qflare.attacks import Attack, select_attackers
from qflare.crypto import read_key
from qflare.errors import ConfigError, QflareError, StackError
from qflare.fl import JobSpec, build_strategy
from qflare.fl.selection import fleet_round_size
from qflare.identity import DEFAULT_KEYS_DIR, TrustedKeys, init_identities, key_path, trusted_ring
from qflare.kafka import KafkaSettings, assign_from_start, make_consumer, make_producer
from qflare.protocol import Decoder, seal
from qflare.protocol.control import JobCommand
from qflare.protocol.training import RoundComplete
from qflare.supervisor import Supervisor
from qflare_cli.attack_options import ATTACK_HELP, ATTACK_PARAM_HELP, ATTACKERS_HELP, attack_option
from qflare_cli.jobs import EVALUATION_HELP, evaluated, evaluation_setting, model_ref
from qflare_cli.reports import DeviceReports, describe
from qflare_cli.rule_options import (
    GATE_HELP,
    QUARANTINE_K_HELP,
    QUARANTINE_M_HELP,
    QUORUM_HELP,
    WEIGHT_CAP_HELP,
    WEIGHTING_HELP,
    rules,
)
from qflare_cli.stack import quiet_clients
from qflare_cli.strategy_options import MU_HELP, PARAM_HELP, STRATEGY_HELP, strategy_params
from qflare_cli.supervised import metrics_ports, printer, start_services

# Wide enough for a round line and the summary when output is piped (rich assumes 80 then).
console = Console(stderr=True, width=max(120, shutil.get_terminal_size().columns))
KEYS_DIR = DEFAULT_KEYS_DIR
#: A round with either status is done: a held one (the publication gate kept the published
#: version) moves the job on like a completed one.
FINISHED = ("completed", "held")


def demo(
    devices: int = typer.Option(
        10, min=1, max=1000, help="Simulated devices (each its own key and data shard)."
    ),
    fraction: float = typer.Option(1.0, min=0.001, max=1.0, help="Client fraction C selected per round."),
    model: str = typer.Option(
        "2nn", help="cnn (FedAvg-paper CNN, 1,663,370 params) or 2nn (199,210), built in."
    ),
    epochs: int = typer.Option(1, min=1, help="Local epochs E."),
    batch: int = typer.Option(10, min=0, help="Local batch size B (0: full batch)."),
    lr: float = typer.Option(0.05, min=0.0, help="Local SGD learning rate."),
    partition: str = typer.Option("iid", help="iid, pathological (2 shards per device) or dirichlet."),
    rounds: int = typer.Option(10, min=1, help="Rounds to complete."),
    deadline_s: float = typer.Option(
        300.0, min=5, help="Per-round deadline; a quorum then closes the round."
    ),
    strategy: str = typer.Option("fedavg", help=STRATEGY_HELP),
    param: list[str] | None = typer.Option(None, "--param", "-p", metavar="KEY=VALUE", help=PARAM_HELP),
    proximal_mu: float | None = typer.Option(None, min=0.0, help=MU_HELP),
    dataset: str = typer.Option("mnist", help="mnist or fashion-mnist."),
    processes: int = typer.Option(2, min=1, max=16, help="Worker processes for the simulated fleet."),
    seed: int = typer.Option(0, help="Seed for model init, data partition and selection."),
    evaluation: str | None = typer.Option(None, help=EVALUATION_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per round on stdout."),
    keep_stack: bool = typer.Option(False, help="Leave the stack running when the demo ends."),
    app: str | None = typer.Option(
        None,
        help="package.module:attribute of the DeviceApp the devices train with instead of the built-in "
        "one (device i gets partition i of --devices); the current directory is importable.",
    ),
    attack: str | None = typer.Option(None, help=ATTACK_HELP),
    attackers: float = typer.Option(0.2, min=0.0, max=1.0, help=ATTACKERS_HELP),
    attack_param: list[str] | None = typer.Option(None, "--attack-param", help=ATTACK_PARAM_HELP),
    weighting: str | None = typer.Option(
        None, help=WEIGHTING_HELP + " Default: declared, or equal with --app (a user's app declares no size)."
    ),
    weight_cap: float = typer.Option(3.0, min=1.0, help=WEIGHT_CAP_HELP),
    quarantine_k: int = typer.Option(0, min=0, help=QUARANTINE_K_HELP),
    quarantine_m: int = typer.Option(5, min=1, help=QUARANTINE_M_HELP),
    gate_max_drop: float | None = typer.Option(None, min=0.0, max=1.0, help=GATE_HELP),
    quorum: float = typer.Option(0.8, min=0.01, max=1.0, help=QUORUM_HELP),
) -> None:
    """Run the main job: federated training of a model on MNIST across simulated devices.

    Pick the aggregation algorithm with --strategy NAME and its parameters with repeated
    --param key=value (`qflare jobs strategies` lists them). --attack NAME --attackers 0.2 makes
    a share of the devices attackers; --weighting, --quarantine-k/--quarantine-m and
    --gate-max-drop set the server's defences beyond the strategy.
    """
    quiet_clients()
    try:
        job = demo_job(
            {
                "model": model_ref(model),
                "strategy": strategy_params(strategy, proximal_mu, param or ()),
                "rounds": rounds,
                "fraction": fraction,
                "quorum": quorum,
                "deadline_s": deadline_s,
                "epochs": epochs,
                "batch_size": batch,
                "lr": lr,
                "seed": seed,
                "dataset": dataset,
                "partition": partition,
                **evaluation_setting(evaluation),
                **rules(
                    weighting or ("equal" if app else "declared"),
                    weight_cap,
                    gate_max_drop,
                    quarantine_k,
                    quarantine_m,
                ),
            },
            devices,
        )
        chosen = attack_option(attack, attack_param or (), app)
    except QflareError as exc:
        console.print(f"[red]demo refused:[/red] {exc}")
        raise typer.Exit(2) from None
    cfg = StackSettings()
    already_up = all(row.up for row in asyncio.run(launcher.status(cfg)))
    try:
        if not already_up:
            console.print("starting the local stack …")
            asyncio.run(launcher.up(cfg, say=console.print))
        run = Run(
            devices=devices,
            processes=processes,
            seed=seed,
            job=job,
            as_json=as_json,
            app=app,
            attack=chosen,
            attackers=attackers,
        )
        run.execute()
    except (QflareError, KeyboardInterrupt) as exc:
        console.print(f"[red]demo stopped:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        if not (already_up or keep_stack):
            console.print("stopped: " + ", ".join(launcher.down(cfg)))


def demo_job(settings: dict[str, Any], devices: int) -> JobSpec:
    """The demo's job over a fleet of ``devices`` from the options' ``settings``.

    ``min_clients`` is the round size selection gives the whole fleet
    (``fleet_round_size``), as ``qflare sim`` sets it, so a bounded robust rule (Krum's
    n >= 2f + 3, Bulyan's 4f + 3) is checked against the rounds the job will have, not
    against a floor of 2 that refuses it at job start.
    """
    fraction = float(settings.get("fraction", 1.0))
    job = JobSpec.parse(
        {**settings, "min_clients": fleet_round_size(devices, fraction)},
        where="",  # errors name the key as the options do: strategy.server_lr, rounds
    )
    build_strategy(job)  # the strategy's own checks (a robust rule's bound), before anything starts
    return job


class Run:
    def __init__(
        self,
        *,
        devices: int,
        processes: int,
        seed: int,
        job: JobSpec,
        as_json: bool,
        on_round: Callable[[RoundComplete], None] | None = None,
        app: str | None = None,
        attack: Attack | None = None,
        attackers: float = 0.0,
    ) -> None:
        if app is not None and job.weighting == "declared":
            # A user's app reports its dataset size only in its updates: nothing is declared at
            # enrolment, so the aggregator would refuse every update (reason ``undeclared``).
            raise ConfigError(
                "devices training a user app (--app) declare no dataset size at enrolment; run the "
                "job with weighting 'equal' (--weighting equal)",
                field="weighting",
            )
        self.on_round = on_round
        #: Attacker devices (``qflare.attacks``): the attack, and the share of the fleet running it.
        self.attack, self.attackers = attack, attackers
        #: The user's DeviceApp (``package.module:attribute``); None: the built-in MNIST app.
        self.app = app
        #: Share of each device's shard held out for local validation (0: train on all of it).
        self.val_fraction = 0.1
        self.run_id = uuid.uuid4().hex[:6]
        # Each demo run uses its own topics, so a rerun never mixes with an earlier job.
        self.kafka = KafkaSettings(topic_prefix=f"demo-{self.run_id}.")
        self.topics = self.kafka.topics
        self.devices, self.processes, self.seed, self.job, self.as_json = (
            devices,
            processes,
            seed,
            job,
            as_json,
        )
        self.services = Supervisor(say=printer(console))
        self.fleet: FleetProcesses | None = None
        self.job_id = f"job-{self.run_id}"

    def execute(self) -> None:
        began = time.monotonic()
        try:
            # The demo is a development stack: it creates the keys a fresh checkout lacks, and says so.
            for path in init_identities(KEYS_DIR):
                console.print(f"created development key {path}")
            start_services(self.services, self.kafka.topic_prefix, Path(".qflare/logs"), console.print)
            asyncio.run(self._main(began))
        finally:
            if self.fleet is not None:
                self.fleet.stop()
            self.services.stop()

    async def _main(self, began: float) -> None:
        ident = operator.operator_identity(KEYS_DIR)
        ids = [f"dev-{self.run_id}-{i:03d}" for i in range(self.devices)]
        if self.attack is not None:
            bad = [ids[i] for i in select_attackers(len(ids), self.attackers, self.seed)]
            console.print(f"attack {self.attack.name}: {len(bad)} attacker devices {', '.join(bad)}")
        tokens = await operator.issue_tokens(
            self.kafka, ident, len(ids), 3600, {"demo": self.run_id}, keys_dir=KEYS_DIR
        )
        self.fleet = start_fleet(
            ids,
            tokens,
            kafka=self.kafka,
            processes=self.processes,
            heartbeat_s=2.0,
            state_dir=Path(".qflare/sim") / self.run_id,
            keys_dir=KEYS_DIR,
            seed=self.seed,
            train={
                "dataset": self.job.dataset,
                "partition": self.job.partition,
                "seed": self.seed,
                "val_fraction": self.val_fraction,
                "app": self.app,
                "attack": self.attack,
                "attackers": self.attackers,
            },
            say=printer(console),
        )
        observer = FleetObserver(
            self.kafka,
            trusted_ring(KEYS_DIR),
            device_prefix=f"dev-{self.run_id}",
            registry_group="qflare-registry",
        )
        await observer.start()
        try:
            console.print(f"enrolling {len(ids)} devices …")
            if not await wait_until(lambda c: c["online"] >= len(ids), observer, 180):
                raise StackError(
                    "fleet", f"only {observer.counts()['online']} of {len(ids)} devices came online"
                )
        finally:
            await observer.stop()
        await self._start_job(ident)
        results = await self._follow(began)
        self._summary(results, time.monotonic() - began)

    async def _start_job(self, ident: Any) -> None:
        command = JobCommand(self.job_id, "start", self.job.to_wire())
        producer = make_producer(self.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(
                self.topics.jobs.name,
                seal(command, ident.signer, self.topics.jobs.channel, sender=ident.name),
                key=command.job_id.encode(),
            )
        finally:
            await producer.stop()
        console.print(f"job {self.job_id} started: {json.dumps(self.job.to_wire())}")

    async def _follow(self, began: float) -> list[RoundComplete]:
        decoder = Decoder(
            TrustedKeys(KEYS_DIR),
            deployment=self.kafka.deployment_id,
            allowed_types={"round_complete"},
            max_age_ms=None,
        )
        consumer = make_consumer(self.kafka, group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        await assign_from_start(consumer, self.topics.rounds_complete)
        done: list[RoundComplete] = []
        # A federated job ends with one evaluation-only round, of the final model.
        total = self.job.rounds + (self.job.evaluation == "federated")
        # The strategy's own parameters, as the devices report having trained with them.
        reports = DeviceReports.of(self.kafka, trusted_ring(KEYS_DIR), self.job_id, self.job.strategy)
        if reports is not None:
            await reports.start()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        try:
            with Progress(*columns, console=console, transient=True) as bar:
                overall = bar.add_task("rounds", total=total)
                current = bar.add_task("round 1: training on devices", total=None)
                while sum(r.status in FINISHED for r in done) < total:
                    self._check_processes()
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        for record in records:
                            rc = self._round(decoder, record.value, record.topic)
                            # A restarted aggregator may publish a round again from its outbox.
                            if rc is None or any(_same(rc, seen) for seen in done):
                                continue
                            done.append(rc)
                            on_devices: dict[str, list[float]] = {}
                            if reports is not None and rc.status == "completed" and rc.num_examples:
                                on_devices = await reports.values(rc.round, rc.num_updates)
                            self._print_round(rc, on_devices)
                            if self.on_round is not None:
                                self.on_round(rc)
                            bar.update(overall, completed=sum(r.status in FINISHED for r in done))
                            bar.update(current, description=f"round {rc.round + 1}: training on devices")
        finally:
            await consumer.stop()
            if reports is not None:
                await reports.stop()
        return done

    def _check_processes(self) -> None:
        """A service or fleet worker that kept crashing ends the demo instead of a silent wait."""
        self.services.check()
        if self.fleet is not None:
            self.fleet.check()

    def _round(self, decoder: Decoder, value: bytes | None, topic: str) -> RoundComplete | None:
        if value is None:
            return None
        try:
            msg = decoder.decode(value, topic)
        except Exception as exc:  # whatever a record holds, the demo goes on (qflare.poison)
            if poison.retry(exc):
                raise
            return None
        body = msg.body
        if (
            isinstance(body, RoundComplete)
            and msg.header.sender == "aggregator"
            and body.job_id == self.job_id
        ):
            return body
        return None

    def _print_round(self, rc: RoundComplete, on_devices: dict[str, list[float]]) -> None:
        m = rc.metrics
        row: dict[str, Any] = {
            "round": rc.round,
            "status": rc.status,
            "participants": rc.num_updates,
            "accuracy": round(m.get("test_accuracy", float("nan")), 4),
            "loss": round(m.get("train_loss", float("nan")), 4),
            "seconds": round(m.get("duration_s", float("nan")), 2),
            "bytes_in": int(m.get("bytes_in", 0)),
            "model_version": rc.model_version,
            "evaluation": rc.evaluation,
            "evaluated_version": m.get("evaluated_version"),
            "evaluated_examples": m.get("evaluated_examples"),
        }
        if on_devices:
            row["on_devices"] = on_devices
        personal = {k: m[k] for k in ("personal_accuracy_mean", "personal_accuracy_p10") if k in m}
        row.update({k: round(v, 4) for k, v in personal.items()})
        if self.as_json:
            typer.echo(json.dumps(row))
        else:
            console.print(
                f"round {rc.round:>3}  {rc.status:<14} participants {rc.num_updates:>3}  "
                f"accuracy {row['accuracy']:.4f} ({evaluated(rc)})  loss {row['loss']:.4f}  "
                f"{row['seconds']:>7.2f} s  {row['bytes_in'] / 1e6:8.2f} MB in"
            )
            if personal:
                console.print(
                    f"          personal models: mean accuracy {row['personal_accuracy_mean']:.4f}, "
                    f"worst decile {row['personal_accuracy_p10']:.4f}"
                )
            for line in describe(on_devices, rc.num_updates):
                console.print(f"          {line}")

    def _summary(self, results: list[RoundComplete], seconds: float) -> None:
        completed = [r for r in results if r.status == "completed"]
        best = max((r.metrics.get("test_accuracy", 0.0) for r in completed), default=0.0)
        table = Table(title="QFLARE demo", show_header=False)
        table.add_row(
            "job", f"{self.job_id} ({self.job.model}, {self.job.strategy.name}, {self.devices} devices)"
        )
        held = sum(r.status == "held" for r in results)
        retried = len(results) - len(completed) - held
        table.add_row("rounds", f"{len(completed)} completed, {held} held, {retried} retried")
        final = completed[-1] if completed else None
        table.add_row(
            "final accuracy",
            f"{final.metrics.get('test_accuracy', 0.0):.4f} ({evaluated(final)})" if final else "-",
        )
        table.add_row("best accuracy", f"{best:.4f}")
        table.add_row("wall time", f"{seconds:.1f} s")
        table.add_row("topics", f"prefix {self.kafka.topic_prefix}")
        table.add_row(
            "service logs", ".qflare/logs/{registry,aggregator,scheduler,audit}.log (structured JSON)"
        )
        reg, agg, sched, aud = metrics_ports(self.services)
        table.add_row(
            "metrics",
            f"http://127.0.0.1:{reg}/metrics (registry), :{agg} (aggregator), "
            f":{sched} (scheduler), :{aud} (audit)",
        )
        # These need the stack: run the demo with --keep-stack (or start it first) to look.
        audit_key = key_path("audit", KEYS_DIR)  # the audit host's own key: here, this machine
        pin = f"SHA256:{read_key(audit_key).fingerprint}" if audit_key.exists() else "<audit key fingerprint>"
        table.add_row(
            "audit", f"qflare audit verify --stream {self.kafka.topic_prefix} --key-fingerprint {pin}"
        )
        table.add_row(
            "traces",
            "Jaeger UI http://127.0.0.1:16686 (service scheduler, tag qflare.job_id); needs --keep-stack",
        )
        table.add_row("logs in Elasticsearch", f"{localstack.elasticsearch_url()}/qflare-logs-*/_search")
        console.print(table)


def _same(a: RoundComplete, b: RoundComplete) -> bool:
    return (a.round, a.status, a.model_version) == (b.round, b.status, b.model_version)
