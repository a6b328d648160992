"""qflare.metrics: round recording, the audit metrics shared with the audit service, the bind address."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from qflare import metrics


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_closed_round_counts_its_status_duration_and_accuracy() -> None:
    before = _value("qflare_rounds_total", service="aggregator", job_id="t-job", status="completed")
    seen = _value("qflare_round_duration_seconds_count", status="completed")
    metrics.record_round_closed(
        "t-job", 3, "completed", {"duration_s": 4.5, "test_accuracy": 0.91, "test_loss": 0.3}
    )
    assert (
        _value("qflare_rounds_total", service="aggregator", job_id="t-job", status="completed") == before + 1
    )
    assert _value("qflare_round_duration_seconds_count", status="completed") == seen + 1
    assert _value("qflare_model_accuracy", job_id="t-job") == pytest.approx(0.91)
    assert _value("qflare_model_loss", job_id="t-job") == pytest.approx(0.3)
    assert _value("qflare_round", job_id="t-job") == 3
    assert _value("qflare_round_last_completed_timestamp_seconds", job_id="t-job") > 0


def test_a_round_without_quorum_leaves_accuracy_alone() -> None:
    metrics.record_round_closed("t-job2", 1, "quorum_not_met", {"duration_s": 1.0})
    assert _value("qflare_rounds_total", service="aggregator", job_id="t-job2", status="quorum_not_met") >= 1
    assert REGISTRY.get_sample_value("qflare_model_accuracy", {"job_id": "t-job2"}) is None
    assert (
        REGISTRY.get_sample_value("qflare_round_last_completed_timestamp_seconds", {"job_id": "t-job2"})
        is None
    )


def test_an_opened_round_is_counted_by_the_scheduler() -> None:
    before = _value("qflare_rounds_total", service="scheduler", job_id="t-job", status="opened")
    metrics.record_round_opened("scheduler", "t-job")
    assert _value("qflare_rounds_total", service="scheduler", job_id="t-job", status="opened") == before + 1


def test_audit_metrics_are_shared_with_the_audit_service() -> None:
    from services.audit import metrics as audit_metrics

    length = metrics.AUDIT_CHAIN_LENGTH
    assert audit_metrics.CHAIN_LENGTH is length
    length.labels("t-stream").set(7)
    assert _value("qflare_audit_chain_length", stream="t-stream") == 7
    metrics.AUDIT_CHAIN_INTACT.labels("t-stream").set(1)
    metrics.AUDIT_VERIFY_FAILURES.labels("t-stream").inc()
    assert _value("qflare_audit_verify_failures_total", stream="t-stream") >= 1


def test_the_existing_names_still_work() -> None:
    for name in (
        "REJECTED",
        "ACCEPTED",
        "BYTES_IN",
        "BYTES_OUT",
        "CONSUMER_LAG",
        "DEVICES_BY_HEALTH",
        "ENROLLED",
        "HANDLE_SECONDS",
        "serve_metrics",
    ):
        assert hasattr(metrics, name)


def test_metrics_bind_address_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, str]] = []
    monkeypatch.setattr(metrics, "start_http_server", lambda port, addr: calls.append((port, addr)))
    monkeypatch.delenv("QFLARE_METRICS_ADDR", raising=False)
    assert metrics.serve_metrics(9999)
    monkeypatch.setenv("QFLARE_METRICS_ADDR", "0.0.0.0")
    assert metrics.serve_metrics(9998)
    assert not metrics.serve_metrics(0)
    assert calls == [(9999, "127.0.0.1"), (9998, "0.0.0.0")]
