"""The audit service's own Prometheus metrics (the shared ones are in ``qflare.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from qflare import metrics

CHAIN_LENGTH = metrics.AUDIT_CHAIN_LENGTH
INDEXED_SEQ = Gauge("qflare_audit_indexed_seq", "Highest chain seq indexed in Elasticsearch", ["stream"])
EVENTS = Counter(
    "qflare_audit_events_total", "Entries appended to the chain, by type and outcome", ["type", "outcome"]
)
CHECKPOINTS = Counter("qflare_audit_checkpoints_total", "Signed checkpoint entries written")
REPLAYS = Counter(
    "qflare_audit_replays_total", "Re-sent copies of accepted messages, counted only", ["topic"]
)
INDEX_ERRORS = Counter("qflare_audit_index_errors_total", "Failed Elasticsearch catch-up attempts")
