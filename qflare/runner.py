"""Running a service until SIGINT/SIGTERM, restarting it when a server goes away.

A lost connection to Kafka, PostgreSQL or Redis restarts the service after a
backoff instead of exiting: every service rebuilds its state from its own
storage and re-reads uncommitted records, so a restart is always safe. An
error that retrying cannot fix (``not is_transient``: a refused authorisation,
an invalid topic, a bug) ends the process with ``EXIT_NOT_TRANSIENT`` and one
log line naming the error, instead of restarting it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, Self, TypeVar

import structlog

from qflare import health, metrics
from qflare.backoff import Backoff
from qflare.errors import is_transient

#: Exit status of a service stopped by an error that is not transient: EX_CONFIG of
#: sysexits.h, which a supervisor can be told not to restart (systemd: RestartPreventExitStatus).
EXIT_NOT_TRANSIENT = 78


class Service(Protocol):
    async def run(self) -> None: ...

    def request_stop(self) -> None: ...


async def serve_forever(
    name: str,
    factory: Callable[[], AbstractAsyncContextManager[Service]],
    *,
    metrics_port: int,
) -> None:
    """Run ``factory()``'s service until a signal, restarting it after transient errors.

    Raises ``SystemExit(EXIT_NOT_TRANSIENT)`` on any other error, once it is logged.
    """
    log = structlog.get_logger(f"qflare.{name}")
    health.set_status(name, "starting")
    metrics.serve_metrics(metrics_port)
    backoff = Backoff(initial_s=0.5, max_s=15)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
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
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if not is_transient(exc):
                    health.set_status(name, "stopping")
                    log.error(
                        f"{name} stopped: {error} (not transient, so a restart would not help)",
                        error=error,
                        exit_status=EXIT_NOT_TRANSIENT,
                        exc_info=exc,
                    )
                    raise SystemExit(EXIT_NOT_TRANSIENT) from exc
                # Not ready until the next start has rebuilt the state from the checkpoint.
                health.set_status(name, "restarting")
                delay = backoff.next_delay_s()
                log.warning(f"{name} lost a server, restarting", error=error, retry_in_s=delay)
                await asyncio.sleep(delay)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class _Client(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_Client)


class BatchLoop(ABC):
    """The lifecycle shared by services that consume in batches with helper tasks.

    ``async with`` starts the service and stops it; ``stop`` releases what
    ``start`` acquired, newest first, even when ``start`` failed half-way.
    ``run`` repeats ``_step`` until ``request_stop``, and a helper task (deadline
    timer, health sweep, indexer…) that ends is surfaced, since none ends on its own.
    """

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._held = contextlib.AsyncExitStack()

    @abstractmethod
    async def start(self) -> None:
        """Acquire through ``_hold``/``_started`` and launch helpers through ``_spawn``."""

    @abstractmethod
    async def _step(self) -> None: ...

    async def stop(self) -> None:
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        # A helper's own error was raised by ``run`` already; it must not keep the clients open.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._held.aclose()

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

    def _spawn(self, helper: Coroutine[Any, Any, None], name: str) -> None:
        """Run a helper task for the service's lifetime; ``run`` raises what ends it."""
        self._tasks.append(asyncio.create_task(helper, name=name))

    def _hold(self, release: Callable[[], Awaitable[object]]) -> None:
        """Have ``stop`` call ``release``: right after ``start`` acquired what it frees."""
        self._held.push_async_callback(release)

    async def _started(self, client: ClientT) -> ClientT:
        """Start a Kafka client that ``stop`` stops (also when its own start fails)."""
        self._hold(client.stop)
        await client.start()
        return client
