"""``keys`` commands: generate a key file, show one (never the private part)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qflare.crypto.base import ML_DSA_65, ML_KEM_768
from qflare.crypto.keys import KeyFile, generate_key, read_key, write_key
from qflare.errors import QflareError
from qflare.identity import DEFAULT_KEYS_DIR, PRINCIPALS, init_identities, key_path

app = typer.Typer(help="Post-quantum key management.", no_args_is_help=True)
keys_app = typer.Typer(help="Generate and inspect key files.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

#: ``--keys-dir`` of every command that signs as the operator or reads the trusted keys.
KEYS_DIR = typer.Option(DEFAULT_KEYS_DIR, "--keys-dir", envvar="QFLARE_KEYS_DIR", help="Key directory.")

_out = Console()
_err = Console(stderr=True)


def _fail(exc: QflareError) -> typer.Exit:
    _err.print(f"[bold red]error[/] ({exc.reason}): {exc}")
    return typer.Exit(code=1)


def _describe(path: Path, key: KeyFile) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("file", str(path))
    table.add_row("alg", key.alg)
    table.add_row("key_id", key.key_id.hex())
    table.add_row("fingerprint", f"SHA256:{key.fingerprint}")
    table.add_row("private", "yes (seed present, not shown)" if key.seed is not None else "no (public only)")
    return table


@keys_app.command("gen")
def gen(
    out: Annotated[Path, typer.Option("--out", help="Key file to write (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    alg: Annotated[str, typer.Option("--alg", help=f"{ML_DSA_65} (signing) or {ML_KEM_768}.")] = ML_DSA_65,
) -> None:
    """Generate a new key and write it to --out."""
    try:
        key = generate_key(alg)
        write_key(out, key, force=force)
    except QflareError as exc:
        raise _fail(exc) from exc
    _out.print(_describe(out, key))


@keys_app.command("init")
def init(
    names: Annotated[
        list[str] | None, typer.Argument(help=f"Identities to create (default: {', '.join(PRINCIPALS)}).")
    ] = None,
    keys_dir: Path = KEYS_DIR,
) -> None:
    """Create the missing keys: <keys-dir>/<name>/<name>.key, public half in <keys-dir>/trusted/.

    Existing keys are kept; services never create their own.
    """
    chosen = names or list(PRINCIPALS)
    try:
        created = init_identities(keys_dir, chosen)
    except QflareError as exc:
        raise _fail(exc) from exc
    for name in chosen:
        path = key_path(name, keys_dir)
        _out.print(f"{'created' if path in created else 'kept   '} {path}")


@keys_app.command("show")
def show(path: Annotated[Path, typer.Argument(help="Key file to describe.")]) -> None:
    """Print a key file's algorithm, key id and public key fingerprint."""
    try:
        key = read_key(path)
    except QflareError as exc:
        raise _fail(exc) from exc
    _out.print(_describe(path, key))


@keys_app.command("export-public")
def export_public(
    path: Annotated[Path, typer.Argument(help="Private key file.")],
    out: Annotated[Path, typer.Option("--out", help="Public-only key file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write the public half of a key (for distributing a trust anchor)."""
    try:
        key = read_key(path).public_only()
        write_key(out, key, force=force)
    except QflareError as exc:
        raise _fail(exc) from exc
    _out.print(_describe(out, key))
