"""Prometheus metrics shared by every QFLARE process.

Metric names are defined once here so dashboards and alert rules see the same
names from every service; the ``service`` label tells them apart.
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

REJECTED = Counter(
    "qflare_rejected_messages_total",
    "Messages rejected, by service, topic and reason",
    ["service", "topic", "reason"],
)
ACCEPTED = Counter(
    "qflare_accepted_messages_total", "Messages accepted, by service and type", ["service", "type"]
)
BYTES_IN = Counter("qflare_bytes_in_total", "Record bytes consumed", ["service"])
BYTES_OUT = Counter("qflare_bytes_out_total", "Record bytes produced", ["service"])
CONSUMER_LAG = Gauge("qflare_consumer_lag_records", "Records behind the log end", ["service", "topic"])
DEVICES_BY_HEALTH = Gauge("qflare_devices", "Devices by health state", ["state"])
ENROLLED = Counter("qflare_enrollments_total", "Enrolments accepted, by outcome", ["outcome"])
HANDLE_SECONDS = Histogram("qflare_handle_seconds", "Time to handle one record", ["service", "type"])


def serve_metrics(port: int) -> bool:
    """Expose /metrics on 127.0.0.1:``port``; 0 disables it (tests, simulated fleets).

    A taken port leaves the service running without /metrics, with a warning that
    names the port: losing the scrape endpoint must not take the service down.
    """
    if not port:
        return False
    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        structlog.get_logger("qflare.metrics").warning(
            "metrics endpoint not started", port=port, error=str(exc)
        )
        return False
    return True
