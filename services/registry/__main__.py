"""``python -m services.registry``: run the registry until SIGINT/SIGTERM.

A lost connection to Kafka, PostgreSQL or Redis restarts the service loop after
a backoff instead of exiting; state is rebuilt from PostgreSQL and uncommitted
records are re-read, so a restart is always safe.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from qflare import metrics
from qflare.backoff import Backoff
from qflare.telemetry import configure_logging
from services.registry.config import RegistrySettings
from services.registry.service import TRANSIENT, RegistryService

log = structlog.get_logger("qflare.registry")


async def serve() -> None:
    cfg = RegistrySettings()
    metrics.serve_metrics(cfg.metrics_port)
    backoff = Backoff(initial_s=0.5, max_s=15)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            async with RegistryService(cfg) as service:
                backoff.reset()
                runner = asyncio.create_task(service.run())
                waiter = asyncio.create_task(stop.wait())
                _done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
                service.request_stop()
                await runner
        except TRANSIENT as exc:
            delay = backoff.next_delay_s()
            log.warning(
                "registry lost a server, restarting", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay
            )
            await asyncio.sleep(delay)


def main() -> None:
    configure_logging("registry")
    asyncio.run(serve())


if __name__ == "__main__":
    main()
