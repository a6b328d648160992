"""``python -m services.audit``: run the audit service until SIGINT/SIGTERM.

The chain head and the consumer positions are read back from PostgreSQL, so a
restart (or a kill -9) neither loses nor repeats an entry.
"""

from __future__ import annotations

import asyncio

from qflare.runner import serve_forever
from qflare.telemetry import configure_logging
from services.audit.config import AuditSettings
from services.audit.service import AuditService


def main() -> None:
    configure_logging("audit")
    cfg = AuditSettings()
    asyncio.run(serve_forever("audit", lambda: AuditService(cfg), metrics_port=cfg.metrics_port))


if __name__ == "__main__":
    main()
