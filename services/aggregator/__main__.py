"""``python -m services.aggregator``: run the aggregator until SIGINT/SIGTERM.

A lost connection to Kafka or PostgreSQL restarts the service after a backoff
instead of exiting; the state is rebuilt from the PostgreSQL checkpoint and
the updates topic is re-read from the stored offsets, so a restart (like a
kill -9) counts every update exactly once.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from qflare import metrics
from qflare.backoff import Backoff
from qflare.telemetry import configure_logging
from services.aggregator.config import AggregatorSettings
from services.aggregator.service import TRANSIENT, AggregatorService

log = structlog.get_logger("qflare.aggregator")


async def serve() -> None:
    cfg = AggregatorSettings()
    metrics.serve_metrics(cfg.metrics_port)
    backoff = Backoff(initial_s=0.5, max_s=15)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            async with AggregatorService(cfg) as service:
                backoff.reset()
                runner = asyncio.create_task(service.run())
                waiter = asyncio.create_task(stop.wait())
                _done, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
                service.request_stop()
                await runner
        except TRANSIENT as exc:
            delay = backoff.next_delay_s()
            log.warning(
                "aggregator lost a server, restarting", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay
            )
            await asyncio.sleep(delay)


def main() -> None:
    configure_logging("aggregator")
    asyncio.run(serve())


if __name__ == "__main__":
    main()
