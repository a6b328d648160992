"""The `qflare` command: the top layer, which may import everything below it.

Services contribute their own sub-commands and runnable entry points through the
``qflare.commands`` and ``qflare.services`` entry-point groups (see pyproject.toml),
so neither the library nor this module has to know them by name.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

try:
    import typer
except ModuleNotFoundError as exc:  # an edge-only install has the script but not the operator's tools
    sys.exit(
        f"the qflare command needs the services role ({exc.name} is missing): pip install 'qflare[services]'"
    )

from qflare_cli.demo import demo
from qflare_cli.devices import app as devices_app
from qflare_cli.jobs import app as jobs_app
from qflare_cli.keys import keys_app
from qflare_cli.models import app as models_app
from qflare_cli.sim import app as sim_app
from qflare_cli.simulate import simulate
from qflare_cli.stack import app as stack_app

app = typer.Typer(
    help="QFLARE: federated learning over Kafka with post-quantum signed updates.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack_app, name="stack")
app.add_typer(keys_app, name="keys")
app.add_typer(devices_app, name="devices")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.command(name="demo")(demo)
app.command(name="simulate")(simulate)
app.add_typer(sim_app, name="sim")

#: Sub-command groups contributed by installed packages, e.g. ``audit = "services.audit.cli:app"``.
COMMAND_GROUP = "qflare.commands"
#: Runnable services, e.g. ``registry = "services.registry.__main__:main"``.
SERVICE_GROUP = "qflare.services"


for _ep in entry_points(group=COMMAND_GROUP):
    app.add_typer(_ep.load(), name=_ep.name)


@app.command()
def run(
    service: str = typer.Argument(..., help="The service to run (registry, scheduler, aggregator, audit)."),
) -> None:
    """Run one QFLARE service in the foreground (same as `python -m services.<name>`)."""
    known = {ep.name: ep for ep in entry_points(group=SERVICE_GROUP)}
    if service not in known:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(sorted(known))}")
    known[service].load()()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
