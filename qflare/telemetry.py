"""Logging set-up shared by every QFLARE process.

structlog renders one JSON object per line with ECS field names
(``@timestamp``, ``log.level``, ``message``, ``service.name``), so the same
lines can be shipped to Elasticsearch unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog


def _ecs(service: str) -> Any:
    def rename(_logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
        event["message"] = event.pop("event", "")
        event["log.level"] = method
        event["service.name"] = service
        event["log.logger"] = event.pop("logger", None) or "qflare"
        return event

    return rename


def configure_logging(service: str, *, level: str | None = None) -> None:
    """JSON lines on stderr; ``QFLARE_LOG_LEVEL`` (default info) sets the threshold."""
    chosen = (level or os.environ.get("QFLARE_LOG_LEVEL", "info")).upper()
    numeric = logging.getLevelName(chosen)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="@timestamp"),
            structlog.processors.format_exc_info,
            _ecs(service),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
