"""The audit service's PostgreSQL state: the chain, consumer positions and the indexed mark.

``append`` and ``save_offsets`` do not open transactions of their own: the service
appends a batch's entries and the positions after it in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from qflare.migrations import migrate
from services.audit.chain import Entry, Event, genesis

SCHEMA_DIR = Path(__file__).with_name("schema")
Conn = psycopg.AsyncConnection[TupleRow]
_COLUMNS = (
    "seq, prev_hash, event_digest, hash, time_ms, actor, round, job, type, outcome, reason, subject, "
    "ref_id, source_topic, source_partition, source_offset, detail, signature"
)


def _entry(row: tuple[Any, ...]) -> Entry:
    (
        seq,
        prev,
        digest,
        h,
        t,
        actor,
        rnd,
        job,
        typ,
        outcome,
        reason,
        subject,
        ref,
        topic,
        part,
        off,
        detail,
        sig,
    ) = row
    event = Event(
        time_ms=int(t),
        actor=str(actor),
        type=str(typ),
        outcome=str(outcome),
        reason=str(reason),
        round=None if rnd is None else int(rnd),
        job=job,
        subject=subject,
        ref_id=None if ref is None else bytes(ref),
        source_topic=str(topic),
        source_partition=int(part),
        source_offset=int(off),
        detail=dict(detail),
    )
    return Entry(int(seq), bytes(prev), bytes(digest), bytes(h), event, None if sig is None else bytes(sig))


class AuditStore:
    def __init__(self, conn: Conn, stream: str) -> None:
        self.conn = conn
        #: The topic prefix: which chain is this deployment's.
        self.stream = stream

    @classmethod
    async def connect(cls, dsn: str, stream: str = "") -> AuditStore:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        # The chain is append-only for the service: tampering needs the owner role.
        await migrate(conn, "audit", SCHEMA_DIR, append_only=("chain",))
        return cls(conn, stream)

    async def close(self) -> None:
        await self.conn.close()

    # --- the chain ---------------------------------------------------------------------

    async def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last entry, (0, genesis) for an empty chain."""
        cur = await self.conn.execute(
            "SELECT seq, hash FROM audit.chain WHERE stream = %s ORDER BY seq DESC LIMIT 1", (self.stream,)
        )
        row = await cur.fetchone()
        return (0, genesis(self.stream)) if row is None else (int(row[0]), bytes(row[1]))

    async def hash_at(self, seq: int) -> bytes | None:
        """The hash of entry ``seq`` (the genesis hash for 0), or None when there is no such entry."""
        if seq == 0:
            return genesis(self.stream)
        cur = await self.conn.execute(
            "SELECT hash FROM audit.chain WHERE stream = %s AND seq = %s", (self.stream, seq)
        )
        row = await cur.fetchone()
        return None if row is None else bytes(row[0])

    async def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        async with self.conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO audit.chain (stream, {_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        self.stream,
                        e.seq,
                        e.prev_hash,
                        e.event_digest,
                        e.hash,
                        e.event.time_ms,
                        e.event.actor,
                        e.event.round,
                        e.event.job,
                        e.event.type,
                        e.event.outcome,
                        e.event.reason,
                        e.event.subject,
                        e.event.ref_id,
                        e.event.source_topic,
                        e.event.source_partition,
                        e.event.source_offset,
                        json.dumps(e.event.detail, sort_keys=True),
                        e.signature,
                    )
                    for e in entries
                ],
            )

    async def entries(self, after: int = 0, limit: int | None = None) -> list[Entry]:
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM audit.chain WHERE stream = %s AND seq > %s ORDER BY seq LIMIT %s",
            (self.stream, after, limit),
        )
        return [_entry(row) for row in await cur.fetchall()]

    async def walk(self, page: int = 5000) -> AsyncIterator[Entry]:
        """Every entry in stored seq order, a page at a time."""
        after = 0
        while rows := await self.entries(after, page):
            for row in rows:
                yield row
            after = rows[-1].seq

    async def query(
        self, *, round: int | None, device: str | None, type: str | None, job: str | None, limit: int
    ) -> list[Entry]:
        where, args = ["stream = %s"], [self.stream]
        for column, value in (("round", round), ("subject", device), ("type", type), ("job", job)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)  # type: ignore[arg-type]
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM audit.chain WHERE {' AND '.join(where)} ORDER BY seq LIMIT %s",
            (*args, limit),
        )
        return [_entry(row) for row in await cur.fetchall()]

    # --- consumer positions ------------------------------------------------------------

    async def offsets(self) -> dict[tuple[str, int], int]:
        cur = await self.conn.execute(
            "SELECT topic, partition, next_offset FROM audit.offsets WHERE stream = %s", (self.stream,)
        )
        return {(str(t), int(p)): int(n) for t, p, n in await cur.fetchall()}

    async def save_offsets(self, positions: dict[tuple[str, int], int]) -> None:
        async with self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO audit.offsets (stream, topic, partition, next_offset) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (stream, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                [(self.stream, t, p, n) for (t, p), n in positions.items()],
            )

    # --- the Elasticsearch mark --------------------------------------------------------

    async def indexed(self) -> int:
        cur = await self.conn.execute("SELECT seq FROM audit.indexed WHERE stream = %s", (self.stream,))
        row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def set_indexed(self, seq: int) -> None:
        await self.conn.execute(
            "INSERT INTO audit.indexed (stream, seq) VALUES (%s, %s) "
            "ON CONFLICT (stream) DO UPDATE SET seq = EXCLUDED.seq",
            (self.stream, seq),
        )
