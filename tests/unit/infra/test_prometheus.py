"""Prometheus scrape config and alert rules: structure, and every metric they name exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promql import problems

ROOT = Path(__file__).resolve().parents[3]
PROM = ROOT / "infra" / "prometheus"
PORTS = {"registry": 9101, "aggregator": 9102, "scheduler": 9103, "audit": 9104}
REQUIRED_ALERTS = {
    "QflareRoundStalled",
    "QflareRejectionSpike",
    "QflareDevicesOffline",
    "QflareAuditChainBroken",
}


def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROM / name).read_text())
    return loaded


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load("alerts.yml")["groups"] for rule in group["rules"]]


def test_every_service_is_scraped_on_its_own_port() -> None:
    config = _load("prometheus.yml")
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    for service, port in PORTS.items():
        assert targets.get(f"qflare-{service}") == f"{service}:{port}"
    assert config["rule_files"] == ["alerts.yml"]


def test_no_target_label_shadows_a_metric_label() -> None:
    # A target label named like a metric's own label renames the metric's to exported_<label>.
    for job in _load("prometheus.yml")["scrape_configs"]:
        for static in job["static_configs"]:
            assert not set(static.get("labels", {})) & {"service", "job_id", "state", "reason"}


def test_the_required_alerts_exist() -> None:
    assert {rule["alert"] for rule in _rules()} >= REQUIRED_ALERTS


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: str(rule["alert"]))
def test_each_rule_is_complete_and_names_real_metrics(rule: dict[str, Any]) -> None:
    assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert problems(rule["expr"]) == []
    # Prometheus owns the `job` label; FL jobs are job_id.
    assert not re.search(r"\bby\s*\(\s*job\s*\)", rule["expr"])


def test_the_checker_catches_unknown_names() -> None:
    assert problems("rate(qflare_nonexistent_total[5m])") == ["unknown metric qflare_nonexistent_total"]
    assert problems('qflare_devices{service="x"}') == ["qflare_devices has no label service"]
    assert problems('sum(qflare_devices{state="offline"}) / sum(qflare_devices)') == []
