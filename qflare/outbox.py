"""The transactional outbox: records queued in PostgreSQL with the change they report, sent after.

A service queues a record (a device record, a model version, an audit event)
in the same transaction as the state change it describes, and flushes the
outbox after the commit. A crash in between re-sends the identical signed bytes
(same message id), which receivers de-duplicate, so no record is lost or
doubled. Each service keeps the table ``<schema>.outbox`` in its own schema;
with a ``scope`` (the topic prefix) services of separate deployments sharing a
database only ever send their own rows.

Server-side only: it needs psycopg, which a device never installs.
"""

from __future__ import annotations

from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg.rows import TupleRow

from qflare import metrics
from qflare.tracing import send_span

#: One queued record: (sequence number, topic, key, value).
Pending = tuple[int, str, bytes | None, bytes]


class Outbox:
    def __init__(self, conn: psycopg.AsyncConnection[TupleRow], schema: str, scope: str | None) -> None:
        """``scope`` None: the table has no scope column, and every row is this service's."""
        self.conn = conn
        self.scope = scope
        self._table = f'"{schema}".outbox'
        self._where = "" if scope is None else "WHERE scope = %s"
        self._params: tuple[str, ...] = () if scope is None else (scope,)

    async def queue(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Add a record; call inside the transaction of the change it reports."""
        if self.scope is None:
            await self.conn.execute(
                f"INSERT INTO {self._table} (topic, key, value) VALUES (%s, %s, %s)", (topic, key, value)
            )
        else:
            await self.conn.execute(
                f"INSERT INTO {self._table} (scope, topic, key, value) VALUES (%s, %s, %s, %s)",
                (self.scope, topic, key, value),
            )

    async def pending(self, limit: int = 500, max_bytes: int = 64 << 20) -> list[Pending]:
        """The oldest queued records: at most ``limit``, and ``max_bytes`` in all (but at least one),
        so a backlog of large records (model versions) is sent in slices rather than loaded at once."""
        cur = await self.conn.execute(
            "SELECT seq, topic, key, value FROM (SELECT seq, topic, key, value, "
            "sum(octet_length(value)) OVER (ORDER BY seq) - octet_length(value) AS before "
            f"FROM {self._table} {self._where} ORDER BY seq LIMIT %s) AS q "
            "WHERE before = 0 OR before + octet_length(value) <= %s ORDER BY seq",
            (*self._params, limit, max_bytes),
        )
        return [
            (int(s), str(t), None if k is None else bytes(k), bytes(v)) for s, t, k, v in await cur.fetchall()
        ]

    async def sent(self, upto_seq: int) -> None:
        where = f"{self._where} AND" if self._where else "WHERE"
        await self.conn.execute(f"DELETE FROM {self._table} {where} seq <= %s", (*self._params, upto_seq))

    async def flush(self, producer: AIOKafkaProducer, *, service: str, trace: bool = True) -> None:
        """Publish queued records in order, deleting each slice once Kafka acknowledged all of it.

        ``trace`` gives each record a ``send`` span and its headers; a service whose
        records are too many to trace one by one turns it off.
        """
        while pending := await self.pending():
            futures: list[Any] = []
            for _, topic, key, value in pending:
                if trace:
                    with send_span(topic, key=key) as headers:
                        futures.append(await producer.send(topic, value, key=key, headers=headers))
                else:
                    futures.append(await producer.send(topic, value, key=key))
            for future in futures:
                await future
            metrics.BYTES_OUT.labels(service).inc(sum(len(v) for *_, v in pending))
            await self.sent(pending[-1][0])
