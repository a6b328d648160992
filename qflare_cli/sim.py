"""`qflare sim`: a job's rounds in this process, no Kafka, devices trained in batches (GPU if any).

    qflare sim --devices 100 --fraction 0.1 --rounds 20 --lr 0.05
    qflare sim sweep --grid lr=0.01,0.05,0.1 --grid strategy=fedavg,fedprox --out sweep.jsonl

Each round prints one JSON line on stdout (round, accuracy, loss, seconds, ...); the
progress bar goes to stderr. The same options and seeds as `qflare demo` give the
same selection, data split and local training as the services' simulated fleet.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qflare.attacks import ATTACKS, Attack, parse_attack, parse_params, select_attackers
from qflare.errors import ConfigError, QflareError
from qflare.fl import JobSpec, build_strategy
from qflare.fl.selection import fleet_round_size
from qflare.ml import layout
from qflare.sim import (
    BatchedTrainer,
    CentralEvaluation,
    ReferenceTrainer,
    RoundRecord,
    Simulation,
    make_fleet,
)
from qflare.sim.attacks import AttackingTrainer, BackdoorScore, backdoor_success, poisoned_fleet
from qflare.sim.plot import plot_accuracy
from qflare.sim.rules import declared_sizes, evaluation_split
from qflare.sim.sweep import apply, key_value, label, parse_grid, points, scalar
from qflare.sim.trainers import Trainer, unsupported
from qflare_cli.jobs import STRATEGY_HELP, model_ref
from qflare_cli.rule_options import (
    GATE_HELP,
    QUARANTINE_K_HELP,
    QUARANTINE_M_HELP,
    WEIGHT_CAP_HELP,
    WEIGHTING_HELP,
    rules,
)

console = Console(stderr=True, width=max(100, shutil.get_terminal_size().columns))

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
)

# Shared by `qflare sim` and `qflare sim sweep` (a sweep's grid overrides them per run).
MODEL = typer.Option("2nn", help="Built-in model: 2nn (199,210 params) or cnn (1,663,370).")
DATASET = typer.Option("mnist", help="mnist or fashion-mnist.")
PARTITION = typer.Option("iid", help="iid, pathological (2 shards per device) or dirichlet.")
DEVICES = typer.Option(100, min=1, max=100_000, help="Simulated devices K; device i gets partition i.")
FRACTION = typer.Option(0.1, min=0.001, max=1.0, help="Client fraction C selected per round.")
ROUNDS = typer.Option(10, min=1, help="Rounds to run.")
EPOCHS = typer.Option(1, min=1, help="Local epochs E.")
BATCH = typer.Option(10, "--batch-size", "--batch", min=0, help="Local batch size B (0: full batch).")
LR = typer.Option(0.05, min=0.0, help="Local SGD learning rate.")
SEED = typer.Option(0, help="Seed of the model, the data split, the selection and local SGD.")
STRATEGY = typer.Option("fedavg", help=STRATEGY_HELP)
PARAM = typer.Option(
    [], "--param", help="A strategy parameter, key=value (repeatable), e.g. proximal_mu=0.01."
)
APP = typer.Option(
    None,
    help="package.module:attribute of a DeviceApp the devices train with instead of the built-in one "
    "(one device after another; device i gets partition i of --devices).",
)
TRAINER = typer.Option(
    "batched",
    help="batched (all of a round's devices at once, torch.func.vmap) or reference (one by one, "
    "train_local: bit-identical to the services' fleet).",
)
TORCH_DEVICE = typer.Option(
    "", "--device", help="torch device for batched training (default: cuda if present, else cpu)."
)
THREADS = typer.Option(0, min=0, help="torch CPU threads (0: torch's default).")
OUT = typer.Option(None, help="Also write the JSON lines to this file.")
ATTACK = typer.Option(
    None,
    help="Make some devices attackers: " + ", ".join(sorted(ATTACKS)) + " (qflare.attacks; "
    "backdoor adds backdoor_success to each round's line).",
)
ATTACKERS = typer.Option(0.2, min=0.0, max=1.0, help="Share of the devices that attack (drawn from --seed).")
ATTACK_PARAM = typer.Option([], "--attack-param", help="An attack parameter, key=value (repeatable).")
WEIGHTING = typer.Option("declared", help=WEIGHTING_HELP)
WEIGHT_CAP = typer.Option(3.0, min=1.0, help=WEIGHT_CAP_HELP)
GATE_MAX_DROP = typer.Option(None, min=0.0, max=1.0, help=GATE_HELP)
QUARANTINE_K = typer.Option(0, min=0, help=QUARANTINE_K_HELP)
QUARANTINE_M = typer.Option(5, min=1, help=QUARANTINE_M_HELP)


def _base(
    model: str,
    dataset: str,
    partition: str,
    devices: int,
    fraction: float,
    rounds: int,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    strategy: str,
    param: list[str],
) -> dict[str, Any]:
    """The job as a ``JobSpec`` map (checked when parsed)."""
    params: dict[str, Any] = {"name": strategy}
    for item in param:
        key, value = key_value(item, field="param")
        params[key] = scalar(value)
    return {
        "model": model_ref(model),
        "dataset": dataset,
        "partition": partition,
        "strategy": params,
        "rounds": rounds,
        "fraction": fraction,
        "min_clients": fleet_round_size(devices, fraction),
        "epochs": epochs,
        "batch_size": batch,
        "lr": lr,
        "seed": seed,
        "evaluation": "central",
    }


def simulation(job: JobSpec, devices: int, app_ref: str | None, trainer: str, device: str) -> Simulation:
    """A ``Simulation`` of ``job`` over ``devices`` with the chosen trainer."""
    return attacked(job, devices, app_ref, trainer, device)[0]


def attacked(
    job: JobSpec,
    devices: int,
    app_ref: str | None,
    trainer: str,
    device: str,
    attack: Attack | None = None,
    attackers: float = 0.0,
) -> tuple[Simulation, BackdoorScore | None]:
    """A ``Simulation`` whose ``attackers`` share of devices runs ``attack``; and the backdoor's score."""
    fleet = make_fleet(job.dataset, job.partition, devices, job.seed)
    bad: list[int] = []
    if attack is not None:
        if app_ref is not None:
            raise ConfigError("attacks need the built-in device, not --app", field="attack")
        bad = select_attackers(devices, attackers, job.seed)
        fleet = poisoned_fleet(fleet, attack, bad)
    # Batched training on a GPU evaluates there too; otherwise exactly as the aggregator does.
    gpu = trainer == "batched" and app_ref is None and _cuda(device)
    test_images, test_labels = evaluation_split(job, fleet.test_images, fleet.test_labels)
    evaluation = CentralEvaluation(test_images, test_labels, device="cuda" if gpu else None)
    chosen: Trainer
    if app_ref is not None:
        from edge.loader import load_app
        from qflare_cli.sim_app import AppTrainer

        arch = job.builtin
        names = tuple(n for n, _ in layout(arch)) if arch is not None else ()
        state = Path(tempfile.mkdtemp(prefix="qflare-sim-app-"))
        chosen = AppTrainer(load_app(app_ref), fleet.ids, names, state)
    elif trainer == "reference":
        chosen = ReferenceTrainer(fleet)
    elif trainer == "batched":
        chosen = BatchedTrainer(fleet, device=device or None)
    else:
        raise typer.BadParameter(f"unknown trainer {trainer!r}: batched or reference")
    if isinstance(chosen, BatchedTrainer):
        key = unsupported(build_strategy(job).train_config(1), batched=True)
        if key is not None:
            console.print(
                f"note: the batched trainer has no personal models ({key}); "
                f"{job.strategy.name} trains with the reference trainer (solve, one device after another)"
            )
    if attack is not None:
        chosen = AttackingTrainer(chosen, attack, frozenset(bad), job.seed)
    score = None if attack is None else backdoor_success(attack, fleet)
    # Every built-in device declares its training shard (an attacker its honest one, so a
    # num_examples liar claims more than it declared); an --app fleet's sizes are its own claims.
    sizes = [len(index) for index in fleet.train_index] if app_ref is None else None
    sim_ = Simulation(
        job,
        fleet.ids,
        chosen,
        evaluation,
        declared=None if sizes is None else declared_sizes(fleet.ids, sizes),
        attackers=frozenset(fleet.ids[i] for i in bad),
    )
    return sim_, score


def _cuda(device: str) -> bool:
    if device:
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def _run(
    sim: Simulation,
    name: str,
    extra: dict[str, Any],
    sink: TextIO | None,
    score: BackdoorScore | None = None,
) -> list[RoundRecord]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
    )
    records: list[RoundRecord] = []
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(name, total=sim.job.rounds, last="")

        def on_round(record: RoundRecord) -> None:
            records.append(record)
            row = {**extra, **record.to_json()}
            if score is not None and sim.job.builtin is not None:
                row["backdoor_success"] = score(sim.job.builtin, sim.weights)
            line = json.dumps(row)
            typer.echo(line)
            if sink is not None:
                sink.write(line + "\n")
                sink.flush()
            acc = f"accuracy {record.accuracy:.4f}" if record.accuracy is not None else ""
            bar.update(task, advance=1, last=acc)

        sim.run(on_round)
    final = sim.final_personal()
    if final is not None:
        # Every device's personal model, not only the last round's: the run's personalised figures.
        line = json.dumps({**extra, **final})
        typer.echo(line)
        if sink is not None:
            sink.write(line + "\n")
            sink.flush()
    return records


def _threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@app.callback()
def sim(
    ctx: typer.Context,
    model: str = MODEL,
    dataset: str = DATASET,
    partition: str = PARTITION,
    devices: int = DEVICES,
    fraction: float = FRACTION,
    rounds: int = ROUNDS,
    epochs: int = EPOCHS,
    batch: int = BATCH,
    lr: float = LR,
    seed: int = SEED,
    strategy: str = STRATEGY,
    param: list[str] = PARAM,
    app_ref: str | None = typer.Option(None, "--app", help=APP.help),
    trainer: str = TRAINER,
    device: str = TORCH_DEVICE,
    threads: int = THREADS,
    out: Path | None = OUT,
    attack: str | None = ATTACK,
    attackers: float = ATTACKERS,
    attack_param: list[str] = ATTACK_PARAM,
    weighting: str = WEIGHTING,
    weight_cap: float = WEIGHT_CAP,
    gate_max_drop: float | None = GATE_MAX_DROP,
    quarantine_k: int = QUARANTINE_K,
    quarantine_m: int = QUARANTINE_M,
) -> None:
    """Run a job's rounds in this process: the strategy, selection, data split and seeds of the
    services, with no Kafka. One JSON line per round on stdout: round, accuracy, loss, seconds."""
    if ctx.invoked_subcommand is not None:
        return
    _threads(threads)
    try:
        base = _base(
            model, dataset, partition, devices, fraction, rounds, epochs, batch, lr, seed, strategy, param
        )
        base.update(rules(weighting, weight_cap, gate_max_drop, quarantine_k, quarantine_m))
        job = JobSpec.parse(base)
        chosen = None if attack is None else parse_attack(attack, parse_params(attack_param))
        sim_, score = attacked(job, devices, app_ref, trainer, device, chosen, attackers)
        extra: dict[str, Any] = {}
        if chosen is not None:
            extra = {"attack": chosen.name, "attackers": len(select_attackers(devices, attackers, seed))}
        with _open(out) as sink:
            _run(sim_, f"{job.strategy.name} {job.model}", extra, sink, score)
    except QflareError as exc:
        console.print(f"[red]sim refused:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def sweep(
    grid: list[str] = typer.Option(
        ...,
        "--grid",
        help="key=v1,v2,... (repeatable): a job field (lr, strategy, epochs, batch_size, "
        "partition, seed, ...) or a strategy parameter; every combination is run.",
    ),
    out: Path = typer.Option(Path("sweep.jsonl"), help="JSON lines: one per round of every run."),
    plot: Path = typer.Option(Path("sweep.png"), help="PNG of test accuracy against rounds, a line per run."),
    model: str = MODEL,
    dataset: str = DATASET,
    partition: str = PARTITION,
    devices: int = DEVICES,
    fraction: float = FRACTION,
    rounds: int = ROUNDS,
    epochs: int = EPOCHS,
    batch: int = BATCH,
    lr: float = LR,
    seed: int = SEED,
    strategy: str = STRATEGY,
    param: list[str] = PARAM,
    app_ref: str | None = typer.Option(None, "--app", help=APP.help),
    trainer: str = TRAINER,
    device: str = TORCH_DEVICE,
    threads: int = THREADS,
    attack: str | None = ATTACK,
    attackers: float = ATTACKERS,
    attack_param: list[str] = ATTACK_PARAM,
) -> None:
    """Run every combination of the --grid values; JSON lines (with each run's settings) and a plot."""
    _threads(threads)
    try:
        base = _base(
            model, dataset, partition, devices, fraction, rounds, epochs, batch, lr, seed, strategy, param
        )
        runs = points(parse_grid(grid))
        jobs = [apply(base, point) for point in runs]  # every point checked before anything runs
        chosen = None if attack is None else parse_attack(attack, parse_params(attack_param))
        series: dict[str, list[tuple[int, float]]] = {}
        with _open(out) as sink:
            for n, (point, job) in enumerate(zip(runs, jobs, strict=True), start=1):
                name = label(point)
                console.print(f"run {n}/{len(runs)}: {name}")
                sim_, score = attacked(job, devices, app_ref, trainer, device, chosen, attackers)
                extra = {"run": name, **point}
                if chosen is not None:
                    extra["attack"] = chosen.name
                records = _run(sim_, name, extra, sink, score)
                series[name] = [(r.round, r.accuracy) for r in records if r.accuracy is not None]
        console.print(f"wrote {out}")
        plot_accuracy(series, plot, title=f"{job.model} {job.dataset} {job.partition}, {devices} devices")
        console.print(f"wrote {plot}")
    except QflareError as exc:
        console.print(f"[red]sweep stopped:[/red] {exc}")
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _open(path: Path | None) -> Iterator[TextIO | None]:
    """A file to write the JSON lines to, or nothing."""
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        yield file


if __name__ == "__main__":  # pragma: no cover
    app(sys.argv[1:])
