"""`qflare demo`: the main job.

Federated training does not exist yet, so for now the demo brings up the real
infrastructure the training job will use, shows its state, and says what the
full demo will do. A stack that was already running before the demo stays up.
"""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from qflare.errors import StackError
from qflare.stack import launcher
from qflare.stack.cli import quiet_clients, status_table
from qflare.stack.settings import StackSettings

console = Console()

PLAN = (
    "Once federated training lands, this command will also start the registry, scheduler, "
    "aggregator and audit services, enrol 10 simulated devices, and train the 2NN on MNIST "
    "with FedAvg for 10 rounds, printing accuracy and loss per round."
)


def demo(
    keep_stack: bool = typer.Option(False, help="Leave the stack running when the demo ends."),
) -> None:
    """Run the main job: start the local stack, show it, and stop what the demo started."""
    quiet_clients()
    cfg = StackSettings()
    already_up = all(row.up for row in asyncio.run(launcher.status(cfg)))
    try:
        rows = asyncio.run(launcher.up(cfg, say=console.print))
    except StackError as exc:
        console.print(f"[red]demo could not start the stack[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(status_table(rows))
    console.print(PLAN)
    if already_up or keep_stack:
        console.print("the stack stays up (`qflare stack down` stops it)")
    else:
        console.print("stopped: " + ", ".join(launcher.down(cfg)))
