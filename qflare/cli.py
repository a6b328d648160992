"""The `qflare` command."""

from __future__ import annotations

import typer

from qflare.crypto.cli import keys_app
from qflare.demo import demo
from qflare.stack.cli import app as stack_app

app = typer.Typer(
    help="QFLARE: federated learning over Kafka with post-quantum signed updates.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack_app, name="stack")
app.add_typer(keys_app, name="keys")
app.command(name="demo")(demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
