"""`qflare devices …`: tokens, revocation, key rotation, and the published fleet."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from qflare import operator
from qflare.kafka import KafkaSettings
from qflare.protocol.control import RegistryCommand
from qflare_cli.keys import KEYS_DIR

app = typer.Typer(
    help="Manage devices through the registry. Commands are signed with the operator key "
    "(<keys-dir>/operator/operator.key, made by `qflare keys init`) and sent over Kafka; the registry trusts "
    "<keys-dir>/trusted/*.pub.",
    no_args_is_help=True,
)
console = Console()


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--label")
        out[name] = value
    return out


@app.command()
def token(
    count: int = typer.Option(1, min=1, max=100_000, help="How many single-use tokens to issue."),
    ttl_s: float = typer.Option(3600.0, min=1, help="Seconds until the tokens expire."),
    label: list[str] = typer.Option([], help="KEY=VALUE label given to devices enrolling with it."),
    keys_dir: Path = KEYS_DIR,
) -> None:
    """Issue single-use, expiring enrolment tokens and print them, one per line."""
    ident = operator.operator_identity(keys_dir)
    try:
        tokens = asyncio.run(
            operator.issue_tokens(KafkaSettings(), ident, count, ttl_s, _labels(label), keys_dir=keys_dir)
        )
    except operator.RegistryUnconfirmedError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    for t in tokens:
        typer.echo(t)


@app.command()
def revoke(device_id: str, keys_dir: Path = KEYS_DIR) -> None:
    """Revoke a device: every service rejects its later messages."""
    cmd = RegistryCommand("revoke", device_id, (), 0, {})
    _confirm(
        asyncio.run(
            operator.send_command(
                KafkaSettings(), operator.operator_identity(keys_dir), cmd, keys_dir=keys_dir
            )
        ),
        f"{device_id} revoked",
    )


@app.command("delete")
def delete(device_id: str, keys_dir: Path = KEYS_DIR) -> None:
    """Delete a device: the registry publishes a signed "deleted" record and every service forgets it."""
    cmd = RegistryCommand("delete", device_id, (), 0, {})
    _confirm(
        asyncio.run(
            operator.send_command(
                KafkaSettings(), operator.operator_identity(keys_dir), cmd, keys_dir=keys_dir
            )
        ),
        f"{device_id} deleted",
    )


@app.command("rotate-key")
def rotate_key(
    device_id: str,
    within_s: float = typer.Option(3600.0, min=1, help="How long the device has to enrol its new key."),
    key_id: str = typer.Option(
        "",
        "--key-id",
        help="The new key's id (32 hex characters). Without it, the device must prove the rotation "
        "with its current key.",
    ),
    keys_dir: Path = KEYS_DIR,
) -> None:
    """Allow a device to re-enrol once with another key: the named one, or one its current key vouches for."""
    try:
        named = bytes.fromhex(key_id) if key_id else None
    except ValueError as exc:
        raise typer.BadParameter("--key-id must be 32 hex characters") from exc
    if named is not None and len(named) != 16:
        raise typer.BadParameter("--key-id must be 32 hex characters")
    expires_ms = int((time.time() + within_s) * 1000)
    cmd = RegistryCommand("rotate_key", device_id, (), expires_ms, {}, named)
    _confirm(
        asyncio.run(
            operator.send_command(
                KafkaSettings(), operator.operator_identity(keys_dir), cmd, keys_dir=keys_dir
            )
        ),
        f"key rotation for {device_id} authorised for {within_s:.0f} s",
    )


def _confirm(confirmed: bool, what: str) -> None:
    if confirmed:
        console.print(what)
        return
    console.print(f"[yellow]sent, but the registry did not confirm in time[/yellow] ({what} once it runs)")
    raise typer.Exit(1)


@app.command("list")
def list_devices(
    keys_dir: Path = KEYS_DIR,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per device."),
) -> None:
    """List devices as the registry published them (compacted device topic)."""
    view = asyncio.run(operator.read_fleet(KafkaSettings(), keys_dir))
    if as_json:
        for d in view.devices.values():
            typer.echo(
                json.dumps(
                    {
                        "device_id": d.device_id,
                        "status": d.status,
                        "key_id": d.key_id.hex(),
                        "health": view.health.get(d.device_id),
                        "labels": d.labels,
                    }
                )
            )
        return
    table = Table("device", "status", "health", "key_id", "labels")
    for d in sorted(view.devices.values(), key=lambda d: d.device_id):
        table.add_row(
            d.device_id,
            d.status,
            view.health.get(d.device_id, "-"),
            d.key_id.hex()[:16],
            ",".join(f"{k}={v}" for k, v in sorted(d.labels.items())),
        )
    console.print(table)
    console.print(f"{len(view.devices)} devices")


@app.command()
def show(device_id: str, keys_dir: Path = KEYS_DIR) -> None:
    """Show one device's published record."""
    view = asyncio.run(operator.read_fleet(KafkaSettings(), keys_dir))
    found = view.devices.get(device_id)
    if found is None:
        console.print(f"[red]no device {device_id!r} in the registry's published state[/red]")
        raise typer.Exit(1)
    typer.echo(
        json.dumps(
            {
                "device_id": found.device_id,
                "status": found.status,
                "key_id": found.key_id.hex(),
                "sig_alg": found.sig_alg,
                "labels": found.labels,
                "health": view.health.get(device_id),
                "enrolled_ms": found.enrolled_ms,
                "updated_ms": found.updated_ms,
            },
            indent=2,
        )
    )
