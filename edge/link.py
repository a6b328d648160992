"""A device's connection to Kafka that never gives up.

Everything a device sends goes through its durable spool first and is removed
only once Kafka acknowledged it (acks=all), so messages leave in order and
nothing is lost while the broker is away. While disconnected the link retries
with exponential backoff and full jitter; it never raises to its caller on a
broker outage. An error that retrying cannot fix (``not is_transient``: a
refused authorisation, a record the broker will never take) ends the link
with one error log line instead; ``check`` and ``stop`` raise it, and what was
spooled stays spooled. Re-sending after a failure can deliver a record twice;
receivers de-duplicate on (sender, message id).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from edge.spool import Spool
from qflare.backoff import Backoff
from qflare.errors import is_transient
from qflare.tracing import Headers

log = structlog.get_logger("qflare.edge.link")


class Link:
    """Drains a :class:`Spool` into Kafka with one background task."""

    def __init__(
        self,
        spool: Spool,
        producer_factory: Callable[[], Any],
        *,
        backoff: Backoff | None = None,
        batch: int = 500,
    ) -> None:
        self.spool = spool
        self._factory = producer_factory
        self._backoff = backoff or Backoff()
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: Any = None
        #: Trace headers of records still in the spool, by hash of the value. Kept in memory
        #: only: a record re-sent after a restart just starts its own trace.
        self._headers: dict[int, Headers] = {}
        self.connected = False
        self.sent = 0
        self.reconnects = 0

    async def __aenter__(self) -> Link:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="edge-link")

    def check(self) -> None:
        """Raise the error that ended the link, if one did (see the module docstring)."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    async def stop(self, *, drain_timeout_s: float = 5.0) -> None:
        """Try to flush what is spooled, then close; anything left stays in the spool."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._until_empty(), timeout=drain_timeout_s)
        task, self._task = self._task, None
        task.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            await self._close_producer()

    async def _until_empty(self) -> None:
        while len(self.spool) and self.connected:
            await asyncio.sleep(0.05)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        droppable: bool = False,
        headers: Headers | None = None,
    ) -> None:
        """Queue a record durably; it is delivered when (and as soon as) Kafka is reachable."""
        self.spool.append(topic, key, value, droppable=droppable)
        if headers:
            self._headers[hash(value)] = headers
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                if self._producer is None:
                    await self._connect()
                await self._drain()
            except Exception as exc:
                self.connected = False
                await self._close_producer()
                if not is_transient(exc):
                    log.error(
                        "kafka refused the link, giving up",
                        error=f"{type(exc).__name__}: {exc}",
                        spooled=len(self.spool),
                    )
                    raise
                delay = self._backoff.next_delay_s()
                log.warning(
                    "kafka unreachable, retrying",
                    error=type(exc).__name__,
                    retry_in_s=round(delay, 2),
                    spooled=len(self.spool),
                )
                await asyncio.sleep(delay)
                continue
            self._wake.clear()
            if not len(self.spool):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def _connect(self) -> None:
        producer = self._factory()
        try:
            await producer.start()
        except BaseException:
            await _quietly(producer.stop())
            raise
        self._producer = producer
        if self._backoff.attempts:
            self.reconnects += 1
            log.info("kafka reachable again", spooled=len(self.spool))
        self._backoff.reset()
        self.connected = True

    async def _drain(self) -> None:
        while batch := self.spool.peek(self._batch):
            futures = [
                await self._producer.send(r.topic, r.value, key=r.key, headers=self._headers_of(r.value))
                for r in batch
            ]
            await asyncio.gather(*futures)
            self.spool.ack(batch[-1].seq)
            self.sent += len(batch)

    def _headers_of(self, value: bytes) -> Headers | None:
        return self._headers.pop(hash(value), None) if self._headers else None

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quietly(asyncio.wait_for(producer.stop(), timeout=5))


async def _quietly(stopping: Awaitable[Any]) -> None:
    """Stop a producer that is being dropped anyway; a broker that is away does not matter then."""
    try:
        await stopping
    except Exception as exc:
        if not is_transient(exc):
            raise
