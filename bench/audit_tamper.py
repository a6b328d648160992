"""`qflare audit verify` before and after each way of tampering with the audit chain.

Run from the repository root against the local stack: ``python bench/audit_tamper.py``.

It starts a real audit service on topics of its own, feeds it signed events (and events with a
reserved name from a trusted service), waits until the last entry is vouched for by a signed head,
stops the service, then for each tampering: runs `qflare audit verify`, tampers with PostgreSQL as
someone with write access to it would, runs it again, and puts the chain back. For each it also
prints what the chain alone says (the check before signed heads existed). Exit status 1 when a
tampering goes unnoticed or an intact chain does not verify.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qflare.crypto import generate_key, read_key, signature_backend, write_key  # noqa: E402
from qflare.identity import key_path  # noqa: E402
from qflare.kafka import KafkaSettings  # noqa: E402
from qflare.protocol.control import AuditEvent  # noqa: E402
from services.audit.chain import CHECKPOINT, verify  # noqa: E402
from services.audit.cli import EXIT_UNVERIFIABLE  # noqa: E402
from tests.integration.services.audit_harness import (  # noqa: E402
    DSN,
    AuditProcess,
    Publisher,
    chain,
    delete_after,
    drop_indices,
    rewrite_from,
    run_verify,
    wait_chain,
    wait_head,
)

EVENTS = 12


def _show(title: str, done: subprocess.CompletedProcess[str]) -> None:
    print(f"  {title}: exit {done.returncode}")
    for line in (done.stdout + done.stderr).strip().splitlines():
        print(f"    {line}")


async def _chain_only(stream: str, keys_dir: Path) -> str:
    """The verdict of the chain alone: links and checkpoints, no head."""
    public = read_key(key_path("audit", keys_dir)).public_key
    backend = signature_backend()
    verdict = verify(stream, await chain(stream), lambda m, s: backend.verify(public, m, s))
    return verdict.line(stream)


class Snapshot:
    """The stream's rows, kept aside so each tampering starts from the intact chain."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.table = f"tamper_{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Snapshot:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE audit.{self.table} AS SELECT * FROM audit.chain WHERE stream = %s",
                (self.stream,),
            )
        return self

    def restore(self) -> None:
        with psycopg.connect(DSN) as conn, conn.transaction():
            conn.execute("DELETE FROM audit.chain WHERE stream = %s", (self.stream,))
            conn.execute(f"INSERT INTO audit.chain SELECT * FROM audit.{self.table}")

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE audit.{self.table}")


def _update_reason(stream: str, seq: int) -> Callable[[], Awaitable[None]]:
    async def tamper() -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(
                "UPDATE audit.chain SET reason = 'nothing to see' WHERE stream = %s AND seq = %s",
                (stream, seq),
            )

    return tamper


async def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="audit-tamper-"))
    keys_dir = work / "keys"
    kafka = KafkaSettings(topic_prefix=f"tamper-{uuid.uuid4().hex[:6]}.")
    stream = kafka.topic_prefix
    audit = AuditProcess(kafka, keys_dir, work / "audit.log")
    plane = Publisher(kafka, keys_dir)
    await plane.start()
    audit.start()
    failures = 0
    try:
        for i in range(EVENTS):
            event = AuditEvent("device.revoked", "info", "registry", subject=f"dev-{i}")
            await plane.send(plane.topics.audit.name, "registry", plane.seal("registry", event))
        await wait_chain(stream, lambda es: sum(e.event.type != CHECKPOINT for e in es) >= EVENTS)
        await wait_head(audit, stream)
        print(f"stream {stream}: {EVENTS} events, a signed checkpoint every {audit.checkpoint_every} entries")
        pin = read_key(key_path("audit", keys_dir)).fingerprint
        print(f"audit key SHA256:{pin} (pinned by --key-fingerprint)\n")

        print("fake checkpoint (the aggregator's key signs an event named audit.checkpoint)")
        before = run_verify(stream, keys_dir)
        _show("before", before)
        fake = AuditEvent(CHECKPOINT, "info", "aggregator", detail={"upto_seq": 1})
        await plane.send(plane.topics.audit.name, "aggregator", plane.seal("aggregator", fake))
        got = await wait_chain(stream, lambda es: any(e.event.reason == "reserved_event" for e in es))
        # One more event, so that some entries come after the last checkpoint.
        event = AuditEvent("device.revoked", "info", "registry", subject="dev-last")
        await plane.send(plane.topics.audit.name, "registry", plane.seal("registry", event))
        await wait_chain(stream, lambda es: es[-1].event.subject == "dev-last")
        await wait_head(audit, stream)
        refused = next(e for e in got if e.event.reason == "reserved_event")
        print(
            f"  recorded as seq {refused.seq}: {refused.event.type} by {refused.event.actor}, "
            f"reason {refused.event.reason}"
        )
        after = run_verify(stream, keys_dir)
        _show("after", after)
        failures += before.returncode != 0 or after.returncode != 0
    finally:
        audit.stop()
        await plane.stop()
    length = len(await chain(stream))
    last_checkpoint = max(e.seq for e in await chain(stream) if e.event.type == CHECKPOINT)
    assert last_checkpoint < length, "the chain must end after its last checkpoint"

    cases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        (f"tail deleted (entries {length - 3}..{length})", lambda: _delete(stream, length - 4)),
        ("stream emptied", lambda: _delete(stream, 0)),
        ("entry rewritten (seq 3, in place)", _update_reason(stream, 3)),
        (
            f"entries rewritten after the last checkpoint (seq {last_checkpoint + 1}.., links recomputed)",
            lambda: rewrite_from(stream, last_checkpoint + 1, "nothing to see"),
        ),
    ]
    with Snapshot(stream) as snapshot:
        for title, tamper in cases:
            print(f"\n{title}")
            before = run_verify(stream, keys_dir)
            _show("before", before)
            await tamper()
            print(f"  chain alone, as before signed heads: {await _chain_only(stream, keys_dir)}")
            after = run_verify(stream, keys_dir)
            _show("after", after)
            from_file = run_verify(stream, keys_dir, "--head-file", str(audit.head_file))
            _show("after, heads from the file", from_file)
            snapshot.restore()
            failures += before.returncode != 0 or after.returncode != 1 or from_file.returncode != 1
    print("\nkey swapped (another public key written to <keys-dir>/trusted/audit.pub)")
    write_key(keys_dir / "trusted" / "audit.pub", generate_key().public_only(), force=True)
    swapped = run_verify(stream, keys_dir)
    _show("after", swapped)
    failures += swapped.returncode != EXIT_UNVERIFIABLE
    await drop_indices(stream)
    print(f"\n{'all tamperings detected' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


async def _delete(stream: str, after: int) -> None:
    delete_after(stream, after)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
