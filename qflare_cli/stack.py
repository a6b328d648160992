"""`qflare stack …` commands."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import time

import typer
from rich.console import Console
from rich.table import Table

from devstack import launcher
from devstack.settings import StackSettings
from qflare.errors import StackError

app = typer.Typer(
    help="Run the development infrastructure (Kafka, PostgreSQL, Redis, Elasticsearch) on 127.0.0.1 "
    "without Docker. Data lives under QFLARE_RUNTIME_DIR (default .qflare/); downloads are cached in "
    "QFLARE_CACHE_DIR.",
    no_args_is_help=True,
)
# Wide enough for endpoints when output is piped (rich assumes 80 columns then).
console = Console(width=max(130, shutil.get_terminal_size().columns))
err = Console(stderr=True, width=max(130, shutil.get_terminal_size().columns))


def quiet_clients() -> None:
    # Health probes expect refusals while servers boot; the clients would log each one.
    for name in ("aiokafka", "kafka", "elastic_transport"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def status_table(rows: list[launcher.ServerStatus]) -> Table:
    table = Table("server", "state", "port", "endpoint", "version", "pid", "note")
    for row in rows:
        state = "[green]up[/green]" if row.up else "[red]down[/red]"
        table.add_row(
            row.name, state, str(row.port), row.endpoint, row.version, str(row.pid or "-"), row.note
        )
    return table


@app.command()
def up() -> None:
    """Install what is missing, start every server, and wait until each passes a health check."""
    quiet_clients()
    cfg = StackSettings()
    began = time.monotonic()
    try:
        rows = asyncio.run(launcher.up(cfg, say=lambda line: console.print(line)))
    except StackError as exc:
        err.print(f"[red]stack up failed[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(status_table(rows))
    console.print(f"stack is up ({time.monotonic() - began:.1f} s)")


@app.command()
def down() -> None:
    """Stop exactly the processes `stack up` started (by pid)."""
    stopped = launcher.down(StackSettings())
    if stopped:
        console.print("stopped: " + ", ".join(stopped))
    else:
        console.print("nothing was running; nothing to stop")


@app.command()
def status() -> None:
    """Show each server as up or down, with its port and endpoint. Exits 1 if any is down."""
    quiet_clients()
    rows = asyncio.run(launcher.status(StackSettings()))
    console.print(status_table(rows))
    if not all(r.up for r in rows):
        raise typer.Exit(1)


@app.command()
def logs(
    server: str = typer.Argument(..., help="kafka, postgres, redis or elasticsearch"),
    lines: int = typer.Option(50, "--lines", "-n", help="How many trailing lines to print."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
) -> None:
    """Print a server's log file."""
    try:
        path = launcher.log_path(StackSettings(), server)
    except StackError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    args = ["tail", "-n", str(lines), *(["-F"] if follow else []), path]
    raise typer.Exit(subprocess.call(args, stdout=sys.stdout))
