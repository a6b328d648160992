"""Running a service until SIGINT/SIGTERM, restarting it when a server goes away.

A lost connection to Kafka, PostgreSQL or Redis restarts the service after a
backoff instead of exiting: every service rebuilds its state from its own
storage and re-reads uncommitted records, so a restart is always safe.
"""

from __future__ import annotations

import asyncio
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, Self

import structlog

from qflare import health, metrics
from qflare.backoff import Backoff


class Service(Protocol):
    async def run(self) -> None: ...

    def request_stop(self) -> None: ...


async def serve_forever(
    name: str,
    factory: Callable[[], AbstractAsyncContextManager[Service]],
    *,
    transient: tuple[type[BaseException], ...],
    metrics_port: int,
) -> None:
    log = structlog.get_logger(f"qflare.{name}")
    health.set_status(name, "starting")
    metrics.serve_metrics(metrics_port)
    backoff = Backoff(initial_s=0.5, max_s=15)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            async with factory() as service:
                backoff.reset()
                health.set_status(name, "ready")  # started: its consumers are assigned
                runner = asyncio.create_task(service.run())
                waiter = asyncio.create_task(stop.wait())
                await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    health.set_status(name, "stopping")
                service.request_stop()
                waiter.cancel()
                await runner
        except transient as exc:
            # Not ready until the next start has rebuilt the state from the checkpoint.
            health.set_status(name, "restarting")
            delay = backoff.next_delay_s()
            log.warning(
                f"{name} lost a server, restarting", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay
            )
            await asyncio.sleep(delay)


class BatchLoop(ABC):
    """The lifecycle shared by services that consume in batches with helper tasks.

    ``async with`` starts the service (and releases what a half-finished start
    acquired), ``run`` repeats ``step`` until ``request_stop``, and a helper task
    (deadline timer, indexer…) that ends is surfaced, since none ends on its own.
    """

    _stopping: asyncio.Event
    _tasks: list[asyncio.Task[None]]

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def _step(self) -> None: ...

    async def __aenter__(self) -> Self:
        started = False
        try:
            await self.start()
            started = True
        finally:
            if not started:
                await self.stop()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._step()
            for task in self._tasks:
                if task.done():
                    task.result()
