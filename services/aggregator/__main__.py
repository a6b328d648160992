"""``python -m services.aggregator``: run the aggregator until SIGINT/SIGTERM.

After a restart (or a kill -9) the state is rebuilt from the PostgreSQL
checkpoint and the updates topic is re-read from the stored offsets, so every
update counts exactly once.
"""

from __future__ import annotations

import asyncio

from qflare.runner import serve_forever
from qflare.telemetry import configure_logging
from services.aggregator.config import AggregatorSettings
from services.aggregator.service import AggregatorService


def main() -> None:
    configure_logging("aggregator")
    cfg = AggregatorSettings()
    asyncio.run(serve_forever("aggregator", lambda: AggregatorService(cfg), metrics_port=cfg.metrics_port))


if __name__ == "__main__":
    main()
