"""Acceptance: one demo round is one trace, with scheduler, aggregator, audit and device spans."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from devstack.settings import StackSettings
from qflare.protocol.training import RoundComplete
from qflare_cli.demo import Run
from tests.jobs import small_fedavg_job

pytestmark = pytest.mark.integration


def _round_trace(stack: StackSettings, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    tags = json.dumps({"qflare.job_id": job_id, "qflare.round": "1"})
    query = urllib.parse.urlencode({"service": "scheduler", "tags": tags, "limit": 5})
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"{stack.jaeger_url}/api/traces?{query}", timeout=10) as resp:
            data = json.load(resp).get("data") or []
        if data:
            services = {p["serviceName"] for p in data[0]["processes"].values()}
            if {"scheduler", "aggregator", "edge", "audit"} <= services or time.monotonic() > deadline:
                assert len(data) == 1, f"round 1 of {job_id} is in {len(data)} traces"
                found: dict[str, Any] = data[0]
                return found
        elif time.monotonic() > deadline:
            raise AssertionError(f"no trace of round 1 of {job_id} in Jaeger")
        time.sleep(1)


def test_a_demo_round_is_one_trace_across_scheduler_devices_and_aggregator(
    stack: StackSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QFLARE_OTLP_ENDPOINT", stack.otlp_endpoint)
    monkeypatch.setenv("QFLARE_OTLP_DELAY_MS", "200")
    job = small_fedavg_job(rounds=1, seed=3)
    seen: list[RoundComplete] = []
    run = Run(devices=3, processes=1, seed=3, job=job, as_json=False, on_round=seen.append)
    run.execute()
    assert [rc.status for rc in seen] == ["completed"]

    found = _round_trace(stack, run.job_id)
    services = {p["serviceName"] for p in found["processes"].values()}
    assert {"scheduler", "aggregator", "edge", "audit"} <= services
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in found["spans"]:
        by_name.setdefault(span["operationName"], []).append(span)
    assert "round 1" in by_name and "aggregate 1" in by_name
    assert any(n.startswith("train ") for n in by_name)
    assert any(n.startswith("process ") and n.endswith("updates") for n in by_name)
    # Fan-in: the aggregation links to (FOLLOWS_FROM) each update it included.
    aggregate = by_name["aggregate 1"][0]
    follows = [r for r in aggregate["references"] if r["refType"] == "FOLLOWS_FROM"]
    assert len(follows) >= seen[0].num_updates
    # The round-complete publish is a child of the aggregation.
    sends = [s for s in found["spans"] if s["operationName"].endswith(".rounds.complete")]
    sends = [s for s in sends if s["operationName"].startswith("send ")]
    assert any(r["spanID"] == aggregate["spanID"] for s in sends for r in s["references"])

    # Kibana-style checks in Elasticsearch: the round's audit events (indexed from the
    # hash chain) and a service log line carrying this round's trace id.
    trace_id = found["traceID"]
    audit_hits = _es_search(
        stack,
        f"{run.kafka.topic_prefix}qflare-audit-*",
        {"bool": {"filter": [{"term": {"qflare.job_id": run.job_id}}, {"term": {"qflare.round": 1}}]}},
    )
    actions = {h["_source"]["event"]["action"] for h in audit_hits}
    assert {"round_task", "round_complete"} & actions or any("round" in a for a in actions), actions
    log_hits = _es_search(stack, "qflare-logs-*", {"term": {"trace.id": trace_id}})
    assert log_hits, f"no log line with trace.id {trace_id}"


def _es_search(stack: StackSettings, index: str, query: dict[str, Any], timeout_s: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    body = json.dumps({"query": query, "size": 50}).encode()
    while True:
        request = urllib.request.Request(
            f"{stack.elasticsearch_url}/{index}/_search?ignore_unavailable=true",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            hits: list[Any] = json.load(resp)["hits"]["hits"]
        if hits or time.monotonic() > deadline:
            return hits
        time.sleep(1)
