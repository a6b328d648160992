"""``python -m services.registry``: run the registry until SIGINT/SIGTERM.

State is rebuilt from PostgreSQL and uncommitted records are re-read, so a
restart (or a kill -9) loses and duplicates nothing.
"""

from __future__ import annotations

import asyncio

from qflare.runner import serve_forever
from qflare.telemetry import configure_logging
from services.registry.config import RegistrySettings
from services.registry.service import RegistryService


def main() -> None:
    configure_logging("registry")
    cfg = RegistrySettings()
    asyncio.run(serve_forever("registry", lambda: RegistryService(cfg), metrics_port=cfg.metrics_port))


if __name__ == "__main__":
    main()
