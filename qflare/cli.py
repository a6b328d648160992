"""The `qflare` command."""

from __future__ import annotations

import importlib

import typer

from edge.simulator.cli import simulate
from qflare.audit_cli import app as audit_app
from qflare.crypto.cli import keys_app
from qflare.demo import demo
from qflare.devices_cli import app as devices_app
from qflare.jobs_cli import app as jobs_app
from qflare.stack.cli import app as stack_app

app = typer.Typer(
    help="QFLARE: federated learning over Kafka with post-quantum signed updates.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack_app, name="stack")
app.add_typer(keys_app, name="keys")
app.add_typer(devices_app, name="devices")
app.add_typer(jobs_app, name="jobs")
app.add_typer(audit_app, name="audit")
app.command(name="demo")(demo)
app.command(name="simulate")(simulate)

SERVICES = ("registry", "scheduler", "aggregator", "audit")


@app.command()
def run(service: str = typer.Argument(..., help="The service to run: " + ", ".join(SERVICES))) -> None:
    """Run one QFLARE service in the foreground (same as `python -m services.<name>`)."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    module = importlib.import_module(f"services.{service}.__main__")
    module.main()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
