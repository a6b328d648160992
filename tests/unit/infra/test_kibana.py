"""Kibana saved objects (NDJSON): each line an object, every reference resolves within the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.audit import indexer

ROOT = Path(__file__).resolve().parents[3]
NDJSON = ROOT / "infra" / "kibana" / "qflare.ndjson"


def _objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in NDJSON.read_text().splitlines() if line.strip()]


def _by_id() -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["type"], o["id"]): o for o in _objects()}


def test_every_line_is_a_saved_object_with_a_unique_id() -> None:
    objects = _objects()
    for obj in objects:
        assert {"type", "id", "attributes", "references"} <= set(obj)
        assert obj["attributes"]["title"]
    assert len({(o["type"], o["id"]) for o in objects}) == len(objects)


def test_every_reference_resolves_within_the_file() -> None:
    known = set(_by_id())
    for obj in _objects():
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in known, (obj["id"], ref)


def test_the_data_views_and_searches_exist() -> None:
    objects = _by_id()
    titles = {o["attributes"]["title"] for (t, _), o in objects.items() if t == "index-pattern"}
    assert titles == {"qflare-logs-*", "qflare-audit-*"}
    for key in [
        ("search", "qflare-logs-by-service-and-level"),
        ("search", "qflare-audit-explorer"),
        ("search", "qflare-rejected-updates"),
        ("visualization", "qflare-rejected-by-reason"),
        ("dashboard", "qflare-overview"),
    ]:
        assert key in objects, key


def test_logs_search_shows_service_and_level() -> None:
    columns = _by_id()[("search", "qflare-logs-by-service-and-level")]["attributes"]["columns"]
    assert {"service.name", "log.level", "message"} <= set(columns)


@pytest.mark.parametrize(
    "obj", [o for o in _objects() if "kibanaSavedObjectMeta" in o["attributes"]], ids=str
)
def test_search_sources_parse_and_name_their_references(obj: dict[str, Any]) -> None:
    source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
    names = {ref["name"] for ref in obj["references"]}
    if "indexRefName" in source:
        assert source["indexRefName"] in names
    if "savedSearchRefName" in obj["attributes"]:
        assert obj["attributes"]["savedSearchRefName"] in names


def test_dashboard_panels_match_its_references() -> None:
    dash = _by_id()[("dashboard", "qflare-overview")]
    panels = json.loads(dash["attributes"]["panelsJSON"])
    names = {ref["name"] for ref in dash["references"]}
    assert len(panels) == len(dash["references"]) >= 4
    for panel in panels:
        assert f"{panel['panelIndex']}:{panel['panelRefName']}" in names
    assert {ref["type"] for ref in dash["references"]} == {"search", "visualization"}


def test_rejections_are_split_by_a_keyword_reason() -> None:
    vis = json.loads(_by_id()[("visualization", "qflare-rejected-by-reason")]["attributes"]["visState"])
    terms = [agg for agg in vis["aggs"] if agg["type"] == "terms"]
    assert terms[0]["params"]["field"] == "event.reason.keyword"


def test_audit_fields_exist_in_the_audit_index_mapping() -> None:
    mappings: dict[str, Any] = indexer.MAPPINGS

    def has(path: str) -> bool:
        node: dict[str, Any] = {"properties": mappings["properties"]}
        for part in path.split("."):
            props = node.get("properties", node.get("fields", {}))
            if part not in props:
                return False
            node = props[part]
        return True

    audit = [
        o
        for o in _objects()
        if {"type": "index-pattern", "id": "qflare-audit"}
        in [{"type": r["type"], "id": r["id"]} for r in o["references"]]
    ]
    fields = {c for o in audit for c in o["attributes"].get("columns", [])} | {"event.reason.keyword"}
    missing = sorted(f for f in fields if not has(f))
    assert missing == []
