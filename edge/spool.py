"""A durable outbox: records wait here, in order, while the broker is unreachable.

SQLite in WAL mode survives a crash of the device process; ``synchronous=NORMAL``
may lose the last few appends on power loss, which for heartbeats is harmless
and keeps a thousand simulated devices from saturating the disk.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Spooled:
    seq: int
    topic: str
    key: bytes | None
    value: bytes


class Spool:
    """FIFO of ``(topic, key, value)`` records, bounded by ``max_records``.

    When full, the oldest *droppable* record (heartbeats: a newer one supersedes
    it) is evicted and counted; other records are never dropped, and appending
    one to a spool full of them raises.
    """

    def __init__(self, path: Path, *, max_records: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_records = max_records
        self.dropped = 0
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
            "key BLOB, value BLOB NOT NULL, droppable INTEGER NOT NULL DEFAULT 0)"
        )
        self._count = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def __len__(self) -> int:
        return self._count

    def append(self, topic: str, key: bytes | None, value: bytes, *, droppable: bool = False) -> None:
        if self._count >= self.max_records:
            self._evict_one()
        self._db.execute(
            "INSERT INTO outbox (topic, key, value, droppable) VALUES (?, ?, ?, ?)",
            (topic, key, value, int(droppable)),
        )
        self._count += 1

    def _evict_one(self) -> None:
        row = self._db.execute("SELECT seq FROM outbox WHERE droppable = 1 ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            raise OverflowError(f"spool is full ({self.max_records} records that must not be dropped)")
        self._db.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))
        self._count -= 1
        self.dropped += 1

    def peek(self, limit: int = 500) -> list[Spooled]:
        rows = self._db.execute(
            "SELECT seq, topic, key, value FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [Spooled(int(seq), str(topic), key, bytes(value)) for seq, topic, key, value in rows]

    def ack(self, upto_seq: int) -> None:
        """Remove every record up to and including ``upto_seq`` (they were delivered)."""
        cur = self._db.execute("DELETE FROM outbox WHERE seq <= ?", (upto_seq,))
        self._count -= cur.rowcount

    def close(self) -> None:
        self._db.close()
