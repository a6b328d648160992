"""`qflare devices …`: tokens, revocation, suspension, key rotation, and the published fleet."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from qflare import operator
from qflare.errors import SchemaError
from qflare.kafka import KafkaSettings
from qflare.protocol.control import RegistryCommand
from qflare.protocol.devices import DECLARED_EXAMPLES_LABEL, MAX_EXAMPLES_LABEL, declared_examples
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
    max_examples: int | None = typer.Option(
        None,
        "--max-examples",
        min=1,
        max=2**40,
        help=f"The largest dataset size a device enrolling with these tokens may declare (its "
        f"{DECLARED_EXAMPLES_LABEL} label); the registry refuses a larger declaration. Devices are "
        "weighted by their declared size.",
    ),
    keys_dir: Path = KEYS_DIR,
) -> None:
    """Issue single-use, expiring enrolment tokens and print them, one per line."""
    ident = operator.operator_identity(keys_dir)
    labels = _labels(label)
    if MAX_EXAMPLES_LABEL in labels:
        raise typer.BadParameter(f"set {MAX_EXAMPLES_LABEL} with --max-examples", param_hint="--label")
    if max_examples is not None:
        labels[MAX_EXAMPLES_LABEL] = str(max_examples)
    try:
        tokens = asyncio.run(
            operator.issue_tokens(KafkaSettings(), ident, count, ttl_s, labels, keys_dir=keys_dir)
        )
    except (operator.RegistryUnconfirmedError, operator.CommandRefused) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    for t in tokens:
        typer.echo(t)


def _send(
    command: str, device_id: str, keys_dir: Path, done: str, labels: dict[str, str] | None = None
) -> None:
    """Sign and send one device command, and wait for the registry to confirm or refuse it."""
    cmd = RegistryCommand(command, device_id, (), 0, labels or {})
    ident = operator.operator_identity(keys_dir)
    try:
        confirmed = asyncio.run(operator.send_command(KafkaSettings(), ident, cmd, keys_dir=keys_dir))
    except operator.CommandRefused as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _confirm(confirmed, done)


@app.command()
def revoke(device_id: str, keys_dir: Path = KEYS_DIR) -> None:
    """Revoke a device: every service rejects its later messages."""
    _send("revoke", device_id, keys_dir, f"{device_id} revoked")


@app.command("delete")
def delete(device_id: str, keys_dir: Path = KEYS_DIR) -> None:
    """Delete a device: the registry publishes a signed "deleted" record and every service forgets it."""
    _send("delete", device_id, keys_dir, f"{device_id} deleted")


@app.command()
def suspend(
    device_id: str,
    reason: str = typer.Option("operator", help="Why, as the audit event's reason."),
    keys_dir: Path = KEYS_DIR,
) -> None:
    """Suspend (quarantine) a device: it is no longer selected for rounds and its updates are
    refused, but it stays enrolled and its heartbeats are accepted. The aggregator sends the same
    command itself when a job's quarantine policy flags a device; `reinstate` lifts it."""
    _send("suspend", device_id, keys_dir, f"{device_id} suspended", {"reason": reason})


@app.command()
def reinstate(device_id: str, keys_dir: Path = KEYS_DIR) -> None:
    """Lift a suspension: the device is active again, selectable, and its updates are accepted.
    Only an operator may reinstate; the registry refuses a device that is not suspended."""
    _send("reinstate", device_id, keys_dir, f"{device_id} reinstated")


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
    try:
        confirmed = asyncio.run(
            operator.send_command(
                KafkaSettings(), operator.operator_identity(keys_dir), cmd, keys_dir=keys_dir
            )
        )
    except operator.CommandRefused as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _confirm(confirmed, f"key rotation for {device_id} authorised for {within_s:.0f} s")


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
                        "declared_examples": _declared(d.labels),
                        "labels": d.labels,
                    }
                )
            )
        return
    table = Table("device", "status", "health", "examples", "key_id", "labels")
    for d in sorted(view.devices.values(), key=lambda d: d.device_id):
        declared = _declared(d.labels)
        table.add_row(
            d.device_id,
            f"[yellow]{d.status}[/yellow]" if d.status == "suspended" else d.status,
            view.health.get(d.device_id, "-"),
            "-" if declared is None else str(declared),
            d.key_id.hex()[:16],
            ",".join(f"{k}={v}" for k, v in sorted(d.labels.items())),
        )
    console.print(table)
    statuses = Counter(d.status for d in view.devices.values())
    by_status = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    console.print(f"{len(view.devices)} devices" + (f" ({by_status})" if by_status else ""))


def _declared(labels: dict[str, str]) -> int | None:
    """The dataset size the device declared and the registry approved (None: none, or unreadable)."""
    try:
        return declared_examples(labels)
    except SchemaError:
        return None


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
                "declared_examples": _declared(found.labels),
                "health": view.health.get(device_id),
                "enrolled_ms": found.enrolled_ms,
                "updated_ms": found.updated_ms,
            },
            indent=2,
        )
    )
