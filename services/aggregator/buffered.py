"""A buffered round's updates in PostgreSQL: written with their ``included`` rows, reloaded on start.

A streaming round's checkpoint is its running sums; a buffered strategy keeps
none, so what must survive a crash is every accepted update itself. Each is
stored (``aggregator.round_updates``, migration 009) in the transaction of the
batch that accepted it, so the rows and the consumer positions agree: a replay
after a kill -9 neither loses nor repeats one. At start the rows of each open
buffered round are loaded into an ``UpdateBuffer`` (which spills past its memory
budget); they are deleted in the transaction that closes the round.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from qflare.fl.buffer import UpdateBuffer, decode_update, encode_update
from services.aggregator.rounds import OpenRound

Conn = psycopg.AsyncConnection[TupleRow]


async def save_pending(conn: Conn, rnd: OpenRound) -> None:
    """Insert the round's newly buffered updates (in the caller's transaction, after ``included``)."""
    if not rnd.pending_updates:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO aggregator.round_updates (job_id, round, device_id, payload) "
            "VALUES (%s, %s, %s, %s)",
            [(rnd.job_id, rnd.round, u.device_id, encode_update(u)) for u in rnd.pending_updates],
        )


async def load(conn: Conn, rnd: OpenRound, max_bytes: int, spill_dir: Path | None) -> UpdateBuffer:
    """The round's stored updates in a fresh buffer (device-id order, spilling past ``max_bytes``)."""
    buffer = UpdateBuffer(max_bytes, spill_dir)
    cur = await conn.execute(
        "SELECT payload FROM aggregator.round_updates WHERE job_id = %s AND round = %s ORDER BY device_id",
        (rnd.job_id, rnd.round),
    )
    for (payload,) in await cur.fetchall():
        buffer.add(decode_update(bytes(payload)))
    return buffer


async def drop(conn: Conn, rnd: OpenRound) -> None:
    """Delete the round's stored updates (in the transaction that closes it)."""
    await conn.execute(
        "DELETE FROM aggregator.round_updates WHERE job_id = %s AND round = %s", (rnd.job_id, rnd.round)
    )
