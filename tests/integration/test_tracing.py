"""Traces through real Kafka into a real Jaeger, and logs carrying the trace id into Elasticsearch.

Jaeger is one of the stack's servers (`qflare stack up` builds and starts it). A
provider of its own, exporting to that Jaeger, keeps this test independent of
whatever the process-wide tracer provider is.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from devstack.settings import StackSettings
from qflare import telemetry, tracing
from qflare.kafka import KafkaSettings, make_consumer, make_producer

pytestmark = pytest.mark.integration


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def _provider(stack: StackSettings, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=f"http://{stack.otlp_endpoint}", insecure=True, timeout=5)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _find_trace(stack: StackSettings, service: str, tags: dict[str, str], want: int) -> dict[str, Any]:
    query = urllib.parse.urlencode({"service": service, "tags": json.dumps(tags), "limit": 20})
    deadline = time.monotonic() + 30
    while True:
        data = _get(f"{stack.jaeger_url}/api/traces?{query}").get("data") or []
        if data and len(data[0]["spans"]) >= want:
            assert len(data) == 1, f"expected one trace, got {len(data)}"
            found: dict[str, Any] = data[0]
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no trace with {want} spans for {service} {tags}: {data}")
        time.sleep(0.5)


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


async def test_send_and_process_spans_reach_jaeger_in_one_trace(
    stack: StackSettings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = f"it-tracing-{unique}"
    provider = _provider(stack, service)
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("qflare"))
    topic, group = f"it-{unique}.traced", f"it-{unique}-group"
    settings = KafkaSettings(bootstrap=stack.kafka_bootstrap)
    producer = make_producer(settings)
    await producer.start()
    try:
        with tracing.round_span(f"job-{unique}", 3), tracing.send_span(topic, key=b"k") as headers:
            meta = await producer.send_and_wait(topic, b"payload", key=b"k", headers=headers)
    finally:
        await producer.stop()
    consumer = make_consumer(settings, topic, group_id=group)
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=60)
        with tracing.process_span(record, group=group):
            pass
    finally:
        await consumer.stop()
    provider.shutdown()

    found = _find_trace(stack, service, {"qflare.round": "3", "qflare.job_id": f"job-{unique}"}, want=3)
    spans = {s["operationName"]: s for s in found["spans"]}
    assert set(spans) == {"round 3", f"send {topic}", f"process {topic}"}
    process = _tags(spans[f"process {topic}"])
    assert process["messaging.system"] == "kafka"
    assert process["messaging.destination.name"] == topic
    assert process["messaging.kafka.destination.partition"] == meta.partition
    assert process["messaging.kafka.message.offset"] == meta.offset
    assert process["messaging.consumer.group.name"] == group
    assert _tags(spans[f"send {topic}"])["span.kind"] == "producer"
    refs = spans[f"process {topic}"]["references"]
    assert refs and refs[0]["spanID"] == spans[f"send {topic}"]["spanID"]


def test_log_lines_reach_elasticsearch_with_the_trace_id(stack: StackSettings, unique: str) -> None:
    provider = TracerProvider()
    shipper = telemetry.LogShipper(
        stack.elasticsearch_url, "it-logs", index_prefix=f"qflare-logs-it-{unique}"
    )
    try:
        with provider.get_tracer("t").start_as_current_span("op") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            line = {"message": f"hello {unique}", "trace.id": trace_id, "service.name": "it-logs"}
            shipper.offer(json.dumps(line))
    finally:
        shipper.close(10.0)
    assert shipper.shipped == 1 and shipper.dropped == 0
    index = f"qflare-logs-it-{unique}-*"
    _get(f"{stack.elasticsearch_url}/{index}/_refresh")
    query = urllib.parse.urlencode({"q": f'trace.id:"{trace_id}"'})
    hits = _get(f"{stack.elasticsearch_url}/{index}/_search?{query}")["hits"]["hits"]
    assert [h["_source"]["message"] for h in hits] == [f"hello {unique}"]
    req = urllib.request.Request(f"{stack.elasticsearch_url}/{index}", method="DELETE")
    urllib.request.urlopen(req, timeout=10).close()
