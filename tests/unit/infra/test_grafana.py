"""The Grafana dashboard and its provisioning: panels query metrics that qflare.metrics defines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .promql import problems

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "infra" / "grafana"


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "qflare.json").read_text())
    return loaded


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_has_a_stable_uid_and_unique_panel_ids() -> None:
    dash = _dashboard()
    assert dash["uid"] == "qflare-overview"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_known_metrics_through_the_provisioned_datasource() -> None:
    uid = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ][0]["uid"]
    for panel in _panels():
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert problems(target["expr"]) == [], (panel["title"], target["expr"])


def test_the_ops_views_are_there() -> None:
    exprs = " ".join(t["expr"] for p in _panels() for t in p["targets"])
    for name in (
        "qflare_rounds_total",
        "qflare_model_accuracy",
        "qflare_devices",
        "qflare_bytes_in_total",
        "qflare_bytes_out_total",
        "qflare_accepted_messages_total",
        "qflare_rejected_messages_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert name in exprs, name


def test_panels_fit_the_grid_without_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "qflare.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
