"""Prometheus metrics shared by every QFLARE process.

Metric names are defined once here so dashboards and alert rules see the same
names from every service; the ``service`` label tells them apart. Jobs are
labelled ``job_id``, never ``job``: Prometheus owns ``job`` (the scrape job)
and would rename a target's own ``job`` label to ``exported_job``.

Each service serves its own /metrics: registry 9101, aggregator 9102,
scheduler 9103, audit 9104. ``infra/prometheus`` (scrape config and alert
rules) and ``infra/grafana`` (the dashboard) use exactly these names, and
``tests/unit/infra`` checks that every name they use is defined here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping

import structlog
from prometheus_client import Counter, Gauge, Histogram

from qflare.health import start_http_server
from qflare.reasons import Reason

# -- messages and traffic ------------------------------------------------------
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
HANDLE_SECONDS = Histogram("qflare_handle_seconds", "Time to handle one record", ["service", "type"])

# -- devices (registry) --------------------------------------------------------
DEVICES_BY_HEALTH = Gauge("qflare_devices", "Devices by health state", ["state"])
ENROLLED = Counter("qflare_enrollments_total", "Enrolments accepted, by outcome", ["outcome"])

# -- training (scheduler opens rounds, the aggregator closes them) -------------
ROUNDS = Counter(
    "qflare_rounds_total",
    "Rounds by the service that counted them and status: opened (scheduler); "
    "completed, quorum_not_met, ... (aggregator)",
    ["service", "job_id", "status"],
)
ROUND_SECONDS = Histogram(
    "qflare_round_duration_seconds",
    "Time from a round's opening to its close, by closing status",
    ["status"],
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
ROUND_CURRENT = Gauge("qflare_round", "The latest closed round of each job", ["job_id"])
ROUND_LAST_COMPLETED = Gauge(
    "qflare_round_last_completed_timestamp_seconds",
    "Unix time at which each job's latest round completed with a new model",
    ["job_id"],
)
MODEL_ACCURACY = Gauge(
    "qflare_model_accuracy", "Test accuracy of each job's latest global model (0..1)", ["job_id"]
)
MODEL_LOSS = Gauge("qflare_model_loss", "Test loss of each job's latest global model", ["job_id"])

# -- anomaly scores and quarantine (the aggregator, at a buffered round's close) --
FLAGGED_UPDATES = Counter(
    "qflare_flagged_updates_total",
    "Scored updates flagged as anomalous, by job and flag rule (norm, cosine, trust); an update "
    "breaking two rules counts under both",
    ["job_id", "reason"],
)
SCORED_UPDATES = Counter("qflare_scored_updates_total", "Updates given anomaly scores", ["job_id"])
UPDATE_DELTA_NORM = Histogram(
    "qflare_update_delta_norm",
    "Euclidean norm of each scored update's delta from the global model",
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000),
)
QUARANTINE_REQUESTS = Counter(
    "qflare_quarantine_requests_total", "Suspend commands the aggregator queued for the registry", ["job_id"]
)

# -- audit (set by the audit service) ------------------------------------------
AUDIT_CHAIN_LENGTH = Gauge("qflare_audit_chain_length", "Entries in the audit hash chain", ["stream"])
AUDIT_CHAIN_INTACT = Gauge(
    "qflare_audit_chain_intact",
    "1 when the latest verification of the hash chain passed, 0 when it found a break",
    ["stream"],
)
AUDIT_VERIFY_FAILURES = Counter(
    "qflare_audit_verify_failures", "Verifications of the audit hash chain that found a break", ["stream"]
)
AUDIT_LAST_VERIFIED = Gauge(
    "qflare_audit_last_verified_timestamp_seconds",
    "Unix time of the latest verification of the hash chain",
    ["stream"],
)


def metric_names() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric defined here: name (as exposed, counters with ``_total``) to (type, label names)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in list(globals().values()):
        if isinstance(value, Counter | Gauge | Histogram):
            out[_exposed(value)] = (value._type, tuple(value._labelnames))
    return out


def _exposed(metric: Counter | Gauge | Histogram) -> str:
    return f"{metric._name}_total" if isinstance(metric, Counter) else metric._name


def preset_rejections(service: str, topics: Iterable[str]) -> None:
    """Create ``service``'s rejected-messages series at 0 for every reason on each topic it reads.

    A series that first appears at 1 has no earlier sample, so ``rate()`` and
    ``increase()`` miss its first rejection, and a dashboard cannot tell "none
    yet" from "not exported". Reasons are a closed ``Reason`` enum, so the
    label set stays bounded.
    """
    for topic in topics:
        for reason in Reason:
            REJECTED.labels(service, topic, reason)


def record_round_opened(service: str, job_id: str) -> None:
    ROUNDS.labels(service, job_id, "opened").inc()


def record_round_closed(job_id: str, round_: int, status: str, round_metrics: Mapping[str, float]) -> None:
    """Count a closed round, its duration, and the new model's accuracy and loss when evaluated."""
    ROUNDS.labels("aggregator", job_id, status).inc()
    ROUND_CURRENT.labels(job_id).set(round_)
    if "duration_s" in round_metrics:
        ROUND_SECONDS.labels(status).observe(round_metrics["duration_s"])
    if status == "completed":
        ROUND_LAST_COMPLETED.labels(job_id).set(time.time())
    if "test_accuracy" in round_metrics:
        MODEL_ACCURACY.labels(job_id).set(round_metrics["test_accuracy"])
    if "test_loss" in round_metrics:
        MODEL_LOSS.labels(job_id).set(round_metrics["test_loss"])


def serve_metrics(port: int, addr: str | None = None) -> bool:
    """Expose /metrics and /healthz (``qflare.health``) on ``addr``:``port``; 0 disables both.

    ``addr`` defaults to ``QFLARE_METRICS_ADDR``, else 127.0.0.1; a container sets
    0.0.0.0 so that Prometheus can reach it across the compose network.

    A taken port leaves the service running without /metrics, with a warning that
    names the port: losing the scrape endpoint must not take the service down.
    """
    if not port:
        return False
    host = addr or os.environ.get("QFLARE_METRICS_ADDR", "127.0.0.1")
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        structlog.get_logger("qflare.metrics").warning(
            "metrics endpoint not started", port=port, addr=host, error=str(exc)
        )
        return False
    return True
