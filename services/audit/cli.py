"""`qflare audit …`: verify the hash chain, query it, rebuild the Elasticsearch index from it.

The chain is read straight from PostgreSQL (the audit service's schema); checkpoint
signatures are checked against ``<keys-dir>/trusted/<identity>.pub``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from services.audit.chain import Entry
from services.audit.config import AuditSettings
from services.audit.indexer import ES_ERRORS, Indexer
from services.audit.store import AuditStore
from services.audit.verifier import verify_stream

app = typer.Typer(help="Inspect and check the audit hash chain.", no_args_is_help=True)
console = Console()
_DEFAULTS = AuditSettings()
DSN = typer.Option(
    _DEFAULTS.postgres_dsn, "--dsn", envvar="QFLARE_AUDIT_POSTGRES_DSN", help="PostgreSQL DSN."
)
STREAM = typer.Option(
    "", "--stream", envvar="QFLARE_KAFKA_TOPIC_PREFIX", help="The chain: the deployment's topic prefix."
)
KEYS = typer.Option(_DEFAULTS.keys_dir, "--keys-dir", envvar="QFLARE_AUDIT_KEYS_DIR", help="Key directory.")


@app.command("verify")
def verify_cmd(dsn: str = DSN, stream: str = STREAM, keys_dir: Path = KEYS, identity: str = "audit") -> None:
    """Check every link and checkpoint signature; exit 1 naming the first broken seq."""
    verdict = asyncio.run(verify_stream(dsn, stream, keys_dir, identity))
    typer.echo(verdict.line(stream))
    if not verdict.ok:
        raise typer.Exit(1)


def _row(e: Entry) -> dict[str, Any]:
    ev = e.event
    return {
        "seq": e.seq,
        "time": datetime.fromtimestamp(ev.time_ms / 1000, UTC).isoformat(timespec="milliseconds"),
        "actor": ev.actor,
        "type": ev.type,
        "outcome": ev.outcome,
        "reason": ev.reason,
        "job": ev.job,
        "round": ev.round,
        "subject": ev.subject,
        "ref_id": None if ev.ref_id is None else ev.ref_id.hex(),
        "source": f"{ev.source_topic}/{ev.source_partition}@{ev.source_offset}",
        "hash": e.hash.hex(),
        "detail": ev.detail,
    }


async def _query(dsn: str, stream: str, **where: Any) -> list[Entry]:
    store = await AuditStore.connect(dsn, stream)
    try:
        return await store.query(**where)
    finally:
        await store.close()


@app.command()
def query(
    round: int | None = typer.Option(None, "--round", help="Entries of this round."),
    device: str | None = typer.Option(None, "--device", help="Entries about this device (subject)."),
    type: str | None = typer.Option(None, "--type", help="Entry type, e.g. update.rejected."),
    job: str | None = typer.Option(None, "--job", help="Entries of this job."),
    limit: int = typer.Option(1000, min=1, help="At most this many entries."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    dsn: str = DSN,
    stream: str = STREAM,
) -> None:
    """Print chain entries, oldest first."""
    rows = [
        _row(e)
        for e in asyncio.run(_query(dsn, stream, round=round, device=device, type=type, job=job, limit=limit))
    ]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    table = Table("seq", "time", "actor", "type", "outcome", "reason", "job", "round", "subject")
    for r in rows:
        cells = (r["seq"], r["time"], r["actor"], r["type"], r["outcome"], r["reason"], r["job"], r["round"])
        table.add_row(*("" if c is None else str(c) for c in (*cells, r["subject"])))
    console.print(table)


async def _reindex(dsn: str, stream: str, url: str, prefix: str) -> int:
    store = await AuditStore.connect(dsn, stream)
    indexer = Indexer(store, url, prefix, batch=1000, interval_s=1.0)
    try:
        return await indexer.catch_up(after=0)
    finally:
        await indexer.close()
        await store.close()


@app.command()
def reindex(
    dsn: str = DSN,
    stream: str = STREAM,
    url: str = typer.Option(
        _DEFAULTS.elasticsearch_url, "--url", envvar="QFLARE_AUDIT_ELASTICSEARCH_URL", help="Elasticsearch."
    ),
    prefix: str = typer.Option(_DEFAULTS.index_prefix, "--index-prefix", envvar="QFLARE_AUDIT_INDEX_PREFIX"),
) -> None:
    """Rebuild the Elasticsearch documents of the whole chain from PostgreSQL (idempotent)."""
    try:
        mark = asyncio.run(_reindex(dsn, stream, url, prefix))
    except ES_ERRORS as exc:
        console.print(f"[red]Elasticsearch refused the reindex: {type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(f"indexed entries 1..{mark}")
