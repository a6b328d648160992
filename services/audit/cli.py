"""`qflare audit …`: verify the hash chain, query it, rebuild the Elasticsearch index from it.

The chain is read straight from PostgreSQL (the audit service's schema). ``verify`` checks
checkpoint signatures and signed heads against ``<keys-dir>/trusted/<identity>.pub``, and only
when that key has the pinned fingerprint. Its exit status: 0 the chain is intact and holds the
latest signed head; 1 it is broken, truncated or rewritten (the line names the first bad seq);
2 the command line is wrong; 3 it cannot be verified (no pinned fingerprint, a key that does not
match it, no signed head, the heads topic unreachable).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from qflare.crypto import KeyFile, read_key
from qflare.crypto.base import fingerprint
from qflare.errors import QflareError
from qflare.kafka import KafkaSettings
from services.audit.chain import Entry, Verdict
from services.audit.config import AuditSettings
from services.audit.heads import Heads, pinned_decoder, pinned_key, read_file, read_topic, vouched
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


#: ``qflare audit verify`` could not verify: nothing to trust, or nothing to compare with.
EXIT_UNVERIFIABLE = 3


@app.command("verify")
def verify_cmd(
    dsn: str = DSN,
    stream: str = STREAM,
    keys_dir: Path = KEYS,
    identity: str = "audit",
    key_fingerprint: str = typer.Option(
        _DEFAULTS.key_fingerprint,
        "--key-fingerprint",
        envvar="QFLARE_AUDIT_KEY_FINGERPRINT",
        help="SHA-256 fingerprint of the audit key (`qflare keys show`, the audit service's start log).",
    ),
    head_file: Path | None = typer.Option(
        None, "--head-file", help="Compare with the heads in this file instead of the heads topic."
    ),
    deployment: str = typer.Option(
        KafkaSettings().deployment_id,
        "--deployment",
        envvar="QFLARE_KAFKA_DEPLOYMENT_ID",
        help="Deployment id the heads were signed for (protocol v2 binds it into every signature).",
    ),
) -> None:
    """Check links, checkpoints and the latest signed head; exit 1 naming the first bad seq."""
    pub_path = keys_dir / "trusted" / f"{identity}.pub"
    if not key_fingerprint:
        found = f" ({pub_path} has SHA256:{_fingerprint_of(pub_path)})" if pub_path.exists() else ""
        _unverifiable(
            "no pinned key: pass --key-fingerprint (or set QFLARE_AUDIT_KEY_FINGERPRINT) with the audit "
            f"key's fingerprint, taken from the audit host, not from this directory{found}"
        )
    try:
        key = pinned_key(pub_path, key_fingerprint)
        verdict, heads = asyncio.run(_verify(dsn, stream, deployment, key, identity, head_file))
    except (QflareError, OSError, KafkaError) as exc:
        _unverifiable(f"{type(exc).__name__}: {exc}")
    for source in heads:
        if source.refused:
            typer.echo(
                f"ignored {source.refused} records in {source.source}: not heads signed by the pinned key"
            )
    if verdict is None:
        where = head_file or KafkaSettings(topic_prefix=stream).topics.audit_heads.name
        _unverifiable(
            f"no signed head of {stream or '(no prefix)'} in {where}: cannot tell whether it was truncated"
        )
    typer.echo(verdict.line(stream))
    if not verdict.ok:
        raise typer.Exit(1)


def _fingerprint_of(path: Path) -> str:
    try:
        return fingerprint(read_key(path, check_permissions=False).public_key)
    except QflareError:
        return "(unreadable)"


def _unverifiable(message: str) -> NoReturn:
    typer.echo(f"cannot verify: {message}", err=True)
    raise typer.Exit(EXIT_UNVERIFIABLE)


async def _verify(
    dsn: str, stream: str, deployment: str, key: KeyFile, identity: str, head_file: Path | None
) -> tuple[Verdict | None, list[Heads]]:
    kafka = KafkaSettings(topic_prefix=stream, deployment_id=deployment)
    spec = kafka.topics.audit_heads
    decoder = pinned_decoder(identity, key, spec.deployment)
    if head_file is not None:
        sources = [read_file(head_file, stream, decoder, spec.name)]
    else:
        sources = [await read_topic(kafka, spec, stream, decoder)]
    points = vouched(sources)
    if not points:
        return None, sources
    return await verify_stream(dsn, stream, key.public_key, points), sources


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
