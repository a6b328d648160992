"""Logging set-up shared by every QFLARE process.

structlog renders one JSON object per line with ECS field names
(``@timestamp``, ``log.level``, ``message``, ``service.name``, ``trace.id``,
``span.id``, ``ecs.version``) on stderr, and the same lines are shipped to
Elasticsearch (``QFLARE_LOG_ES_URL``, default the local stack's node; ``none``
disables) by a :class:`LogShipper`: a background thread with a bounded queue,
so logging never waits on the network. When Elasticsearch is down the oldest
lines are dropped and counted (``qflare_log_lines_dropped_total``).
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from collections import deque
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import trace
from prometheus_client import Counter

from qflare import localstack
from qflare.tracing import configure_tracing

ECS_VERSION = "8.11.0"

LOG_LINES_DROPPED = Counter(
    "qflare_log_lines_dropped_total", "Log lines not shipped to Elasticsearch", ["service", "reason"]
)

_shipper: LogShipper | None = None


def _ecs(service: str) -> Any:
    def rename(_logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
        event["message"] = event.pop("event", "")
        event["log.level"] = event.pop("level", method)
        event["service.name"] = service
        event["log.logger"] = event.pop("logger", None) or "qflare"
        event["ecs.version"] = ECS_VERSION
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            event["trace.id"] = format(span.trace_id, "032x")
            event["span.id"] = format(span.span_id, "016x")
        return event

    return rename


class LogShipper:
    """Ships rendered JSON lines to Elasticsearch's ``_bulk`` API from a daemon thread.

    ``offer`` never blocks: the queue holds at most ``capacity`` lines and a full
    queue drops its oldest line. While Elasticsearch is unreachable, lines stay
    queued (dropping the oldest), and one warning per outage goes to stderr.
    """

    def __init__(
        self,
        url: str,
        service: str,
        *,
        index_prefix: str = "qflare-logs",
        capacity: int = 10_000,
        batch: int = 500,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.url, self.service, self.index_prefix = url.rstrip("/"), service, index_prefix
        self.batch, self.interval_s, self.timeout_s = batch, interval_s, timeout_s
        self._queue: deque[tuple[int, str]] = deque(maxlen=capacity)
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.dropped = 0
        self.shipped = 0
        self.down = False
        self._thread = threading.Thread(target=self._run, name="qflare-log-shipper", daemon=True)
        self._thread.start()

    def offer(self, line: str) -> None:
        with self._lock:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
                LOG_LINES_DROPPED.labels(self.service, "queue_full").inc()
            self._queue.append((next(self._seq), line))
            if len(self._queue) >= self.batch:
                self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)

    def close(self, timeout_s: float = 2.0) -> None:
        """Ship what is queued (within ``timeout_s``) and stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            while self._queue and self._ship_once():
                pass
            if stopping:
                return
            if self.down:  # back off while the node is unreachable
                self._stop.wait(self.interval_s * 2)

    def _ship_once(self) -> bool:
        with self._lock:
            pending = list(itertools.islice(self._queue, self.batch))
        if not pending:
            return False
        index = f"{self.index_prefix}-{datetime.now(UTC):%Y.%m.%d}"
        action = json.dumps({"create": {"_index": index}})
        body = "".join(f"{action}\n{line}\n" for _, line in pending).encode()
        request = urllib.request.Request(
            f"{self.url}/_bulk", data=body, headers={"Content-Type": "application/x-ndjson"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                reply = json.load(resp)
        except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
            if not self.down:
                self.down = True
                self._warn(f"elasticsearch unreachable, queueing log lines: {type(exc).__name__}: {exc}")
            return False
        if self.down:
            self.down = False
            self._warn("elasticsearch reachable again")
        failed = sum(1 for item in reply.get("items", ()) if item.get("create", {}).get("error"))
        if failed:
            self.dropped += failed
            LOG_LINES_DROPPED.labels(self.service, "rejected").inc(failed)
        self.shipped += len(pending) - failed
        last = pending[-1][0]
        with self._lock:  # lines dropped meanwhile were the oldest: drop up to what was sent
            while self._queue and self._queue[0][0] <= last:
                self._queue.popleft()
        return True

    def _warn(self, message: str) -> None:
        line = {
            "@timestamp": datetime.now(UTC).isoformat(),
            "log.level": "warning",
            "message": message,
            "service.name": self.service,
            "log.logger": "qflare.telemetry",
            "ecs.version": ECS_VERSION,
            "url": self.url,
            "dropped": self.dropped,
        }
        print(json.dumps(line), file=sys.stderr, flush=True)


def _default_es_url() -> str:
    return os.environ.get("QFLARE_LOG_ES_URL") or localstack.elasticsearch_url()


def _shipping(shipper: LogShipper) -> Any:
    def ship(_logger: object, _method: str, line: str) -> str:
        shipper.offer(line)
        return line

    return ship


def configure_logging(service: str, *, level: str | None = None, es_url: str | None = None) -> None:
    """JSON lines on stderr, shipped to Elasticsearch, and tracing (see :mod:`qflare.tracing`).

    ``QFLARE_LOG_LEVEL`` (default info) sets the threshold.
    """
    global _shipper
    configure_tracing(service)
    chosen = (level or os.environ.get("QFLARE_LOG_LEVEL", "info")).upper()
    numeric = logging.getLevelName(chosen)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING), format="%(message)s")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="@timestamp"),
        structlog.processors.format_exc_info,
        _ecs(service),
        structlog.processors.JSONRenderer(),
    ]
    target = es_url or _default_es_url()
    if _shipper is not None:
        _shipper.close(0.5)
        _shipper = None
    if target.strip().lower() != "none":
        _shipper = LogShipper(target, service)
        processors.append(_shipping(_shipper))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def log_shipper() -> LogShipper | None:
    """The shipper installed by :func:`configure_logging`, if any."""
    return _shipper


@atexit.register
def _flush_at_exit() -> None:
    if _shipper is not None:
        _shipper.close(2.0)
