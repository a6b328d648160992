"""`qflare jobs …`: start, inspect and stop federated training jobs.

Commands are signed with the operator key and published on the job control
topic; the scheduler and the aggregator act on them. `status` reads the round
tasks and round-complete events the services published.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from qflare import operator, poison
from qflare.errors import QflareError
from qflare.fl import JobSpec, build_strategy
from qflare.fl.job import BUILTIN
from qflare.identity import TrustedKeys
from qflare.kafka import KafkaSettings, make_producer, prepare_topics, read_to_end, replay
from qflare.protocol import Decoder, seal
from qflare.protocol.control import JobCommand
from qflare.protocol.training import RoundComplete, RoundTask
from qflare_cli.keys import KEYS_DIR as KEYS
from qflare_cli.strategy_options import MU_HELP as MU_HELP  # re-exported: demo and sim share the options
from qflare_cli.strategy_options import PARAM_HELP, describe_strategies
from qflare_cli.strategy_options import STRATEGY_HELP as STRATEGY_HELP
from qflare_cli.strategy_options import strategy_params as strategy_params

app = typer.Typer(
    help="Federated training jobs, driven through the scheduler over Kafka.", no_args_is_help=True
)
console = Console()


async def _send(kafka: KafkaSettings, keys_dir: Path, command: JobCommand) -> None:
    ident = operator.operator_identity(keys_dir)
    t = kafka.topics
    await prepare_topics(kafka, t)
    producer = make_producer(kafka)
    await producer.start()
    try:
        await producer.send_and_wait(
            t.jobs.name,
            seal(command, ident.signer, t.jobs.channel, sender=ident.name),
            key=command.job_id.encode(),
        )
    finally:
        await producer.stop()


def model_ref(model: str) -> str:
    """A bare built-in name (``2nn``) as the reference a job spec holds (``builtin:2nn``)."""
    return model if ":" in model or "@" in model else f"{BUILTIN}{model}"


EVALUATION_HELP = (
    "central (the aggregator, on the dataset's test split) or federated (the devices, on their own "
    "held-out data, and once more on the final model); default: central for a built-in model, "
    "federated for a stored one."
)


def evaluation_setting(evaluation: str | None) -> dict[str, str]:
    """The job spec's ``evaluation`` key when the option was given (else the spec's default applies)."""
    return {} if evaluation is None else {"evaluation": evaluation}


def evaluated(rc: RoundComplete) -> str:
    """Who evaluated which version, as a round's report shows it: ``federated v3``, or ``-``."""
    version = rc.metrics.get("evaluated_version")
    if rc.evaluation is None or version is None:
        return "-"
    return f"{rc.evaluation} v{int(version)}"


@app.command()
def start(
    job_id: str = typer.Option("", help="Job id (default: a fresh one)."),
    model: str = typer.Option("2nn", help="cnn or 2nn (built in), or <name>@<version> of the model store."),
    strategy: str = typer.Option("fedavg", help=STRATEGY_HELP),
    rounds: int = typer.Option(10, min=1),
    fraction: float = typer.Option(0.1, min=0.001, max=1.0, help="Client fraction C."),
    min_clients: int = typer.Option(2, min=1),
    deadline_s: float = typer.Option(300.0, min=1),
    epochs: int = typer.Option(1, min=1),
    batch: int = typer.Option(10, min=0),
    lr: float = typer.Option(0.05, min=0.0),
    seed: int = typer.Option(0),
    dataset: str = typer.Option("mnist"),
    param: list[str] | None = typer.Option(None, "--param", "-p", metavar="KEY=VALUE", help=PARAM_HELP),
    proximal_mu: float | None = typer.Option(None, min=0.0, help=MU_HELP),
    evaluation: str | None = typer.Option(None, help=EVALUATION_HELP),
    keys_dir: Path = KEYS,
) -> None:
    """Start a job: the scheduler opens rounds on healthy devices until ROUNDS complete.

    The aggregation algorithm is --strategy NAME with its parameters as repeated
    --param key=value (e.g. --strategy fedadam --param server_lr=0.03 --param tau=0.001);
    `qflare jobs strategies` lists them all with their parameters and defaults.
    """
    job = job_id or f"job-{uuid.uuid4().hex[:8]}"
    try:
        spec = JobSpec.parse(
            {
                "model": model_ref(model),
                "strategy": strategy_params(strategy, proximal_mu, param or ()),
                "rounds": rounds,
                "fraction": fraction,
                "min_clients": min_clients,
                "deadline_s": deadline_s,
                "epochs": epochs,
                "batch_size": batch,
                "lr": lr,
                "seed": seed,
                "dataset": dataset,
                **evaluation_setting(evaluation),
            },
            where="",  # errors name the key as the options do: strategy.server_lr, rounds
        )
        build_strategy(spec)  # the strategy's own checks, e.g. a robust rule's bound on min_clients
    except QflareError as exc:
        console.print(f"[red]job refused:[/red] {exc}")
        raise typer.Exit(2) from None
    config = spec.to_wire()
    asyncio.run(_send(KafkaSettings(), keys_dir, JobCommand(job, "start", config)))
    console.print(f"started {job}: {json.dumps(config)}")


@app.command()
def strategies(as_json: bool = typer.Option(False, "--json", help="One JSON list on stdout.")) -> None:
    """List the strategies a job can use: mode, what devices send, parameters with types and defaults."""
    rows = describe_strategies()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("strategy", "mode", "devices send", "parameters (type = default; bounds)", "description")
    for row in rows:
        sends = row["sends"]
        sent = "; ".join(f"{g}: {what}" for g, what in sends["groups"].items())
        if sends["metrics"]:
            sent += "; metrics: " + ", ".join(sends["metrics"])
        params = "\n".join(
            f"{p['name']}: {p['type']} = {p['default']!r}" + (f" ({p['bounds']})" if p["bounds"] else "")
            for p in row["params"]
        )
        table.add_row(row["name"], row["mode"], sent, params or "-", row["description"])
    console.print(table)


@app.command()
def stop(job_id: str, keys_dir: Path = KEYS) -> None:
    """Stop a job: no new rounds open; an open round still closes."""
    asyncio.run(_send(KafkaSettings(), keys_dir, JobCommand(job_id, "stop")))
    console.print(f"stop sent for {job_id}")


@app.command()
def status(job_id: str, keys_dir: Path = KEYS, as_json: bool = typer.Option(False, "--json")) -> None:
    """Rounds opened and completed for a job, from the services' published events."""
    opened, completed = asyncio.run(_history(KafkaSettings(), keys_dir, job_id))
    if not opened and not completed:
        console.print(f"[yellow]no rounds for {job_id} yet[/yellow]")
        raise typer.Exit(1)
    rows = []
    for rnd in sorted(set(opened) | set(completed)):
        task, done = opened.get(rnd), completed.get(rnd)
        rows.append(
            {
                "round": rnd,
                "selected": len(task.devices) if task else None,
                "status": done.status if done else "open",
                "model_version": done.model_version if done else None,
                "participants": done.num_updates if done else None,
                "accuracy": done.metrics.get("test_accuracy") if done else None,
                "loss": done.metrics.get("train_loss") if done else None,
                "evaluated": evaluated(done) if done else None,
                "evaluated_examples": done.metrics.get("evaluated_examples") if done else None,
            }
        )
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table(
        "round",
        "status",
        "selected",
        "participants",
        "model version",
        "accuracy",
        "train loss",
        "evaluated",
        title=job_id,
    )
    keys = ("round", "status", "selected", "participants", "model_version", "accuracy", "loss", "evaluated")
    for r in rows:
        table.add_row(
            *(
                ("-" if r[k] is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])))
                for k in keys
            )
        )
    console.print(table)


async def _history(
    kafka: KafkaSettings, keys_dir: Path, job_id: str
) -> tuple[dict[int, RoundTask], dict[int, RoundComplete]]:
    t = kafka.topics
    decoder = Decoder(
        TrustedKeys(keys_dir),
        deployment=kafka.deployment_id,
        allowed_types={"round_task", "round_complete"},
        max_age_ms=None,
    )
    opened: dict[int, RoundTask] = {}
    completed: dict[int, RoundComplete] = {}
    async with replay(kafka, t.rounds, t.rounds_complete) as consumer:
        async for record in read_to_end(consumer):
            try:
                body = decoder.decode(record.value, record.topic).body if record.value else None
            except Exception as exc:  # whatever a record holds, the listing goes on (qflare.poison)
                if poison.retry(exc):
                    raise
                continue
            if isinstance(body, RoundTask) and body.job_id == job_id:
                opened[body.round] = body
            elif isinstance(body, RoundComplete) and body.job_id == job_id:
                completed[body.round] = body
    return opened, completed
