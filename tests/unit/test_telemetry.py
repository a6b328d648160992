"""Trace context in Kafka headers, ECS log rendering, and the non-blocking log shipper."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from contextlib import redirect_stderr
from types import SimpleNamespace

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from qflare import telemetry, tracing

_provider = TracerProvider()
_spans = InMemorySpanExporter()
_provider.add_span_processor(SimpleSpanProcessor(_spans))
_tracer = _provider.get_tracer("test")


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    _spans.clear()
    yield


def test_inject_extract_round_trip_keeps_trace_and_span() -> None:
    with _tracer.start_as_current_span("round") as span:
        headers = tracing.inject_headers([("other", b"x")])
        sent = span.get_span_context()
    assert headers[0] == ("other", b"x")
    assert dict(headers)["traceparent"].startswith(b"00-")
    got = tracing.span_context_of(headers)
    assert got is not None and got.is_remote
    assert (got.trace_id, got.span_id) == (sent.trace_id, sent.span_id)
    # A child started from the extracted context joins the same trace.
    with _tracer.start_as_current_span("child", context=tracing.extract_context(headers)) as child:
        assert child.get_span_context().trace_id == sent.trace_id
    assert tracing.span_context_of(None) is None
    assert tracing.span_context_of([("traceparent", b"garbage")]) is None
    assert tracing.span_context_of({"traceparent": dict(headers)["traceparent"]}) == got


def test_fan_in_parents_on_the_round_and_links_every_record() -> None:
    with _tracer.start_as_current_span("round") as root:
        round_ctx = trace.set_span_in_context(root)
    fan = tracing.FanIn()
    for _ in range(3):
        with _tracer.start_as_current_span("send", context=round_ctx):
            fan.add(tracing.inject_headers() + tracing.round_headers(round_ctx))
    assert fan.parent is not None and fan.parent.span_id == root.get_span_context().span_id
    assert len(fan.span_links()) == 3
    with _tracer.start_as_current_span("aggregate", context=fan.context(), links=fan.span_links()) as agg:
        assert agg.get_span_context().trace_id == root.get_span_context().trace_id


def test_process_span_follows_messaging_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "tracer", lambda: _tracer)
    with tracing.send_span("t.updates", key=b"dev-1") as headers:
        pass
    record = SimpleNamespace(topic="t.updates", partition=2, offset=41, headers=headers)
    with tracing.process_span(record, group="g1"):
        pass
    send, process = sorted(_spans.get_finished_spans(), key=lambda s: s.name, reverse=True)
    assert (send.name, process.name) == ("send t.updates", "process t.updates")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    attrs = dict(process.attributes or {})
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == "t.updates"
    assert attrs["messaging.kafka.destination.partition"] == 2
    assert attrs["messaging.kafka.message.offset"] == 41
    assert attrs["messaging.consumer.group.name"] == "g1"


class _Failing(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.FAILURE


def test_failed_exports_are_counted_as_dropped() -> None:
    counter = tracing.SPANS_DROPPED.labels("unit")
    before = counter._value.get()
    with _tracer.start_as_current_span("x") as span:
        pass
    tracing.CountingExporter(_Failing(), "unit").export([span])  # type: ignore[list-item]
    assert counter._value.get() == before + 1


def test_an_unreachable_collector_drops_and_counts_spans_without_raising() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    counter = tracing.SPANS_DROPPED.labels("unit-otlp")
    before = counter._value.get()
    otlp = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{_closed_port()}", insecure=True, timeout=1)
    with _tracer.start_as_current_span("x") as span:
        pass
    began = time.monotonic()
    result = tracing.CountingExporter(otlp, "unit-otlp").export([span])  # type: ignore[list-item]
    assert result is SpanExportResult.FAILURE
    assert counter._value.get() == before + 1
    assert time.monotonic() - began < 5


def test_ecs_rendering_carries_trace_and_span_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QFLARE_OTLP_ENDPOINT", "none")
    out = io.StringIO()
    telemetry.configure_logging("unit-svc", es_url="none")
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=out), cache_logger_on_first_use=False
    )
    try:
        with _tracer.start_as_current_span("op") as span:
            structlog.get_logger("qflare.test").info("hello", round=3)
    finally:
        structlog.reset_defaults()
    line = json.loads(out.getvalue().splitlines()[-1])
    ctx = span.get_span_context()
    assert line["message"] == "hello"
    assert line["log.level"] == "info" and "level" not in line
    assert line["service.name"] == "unit-svc"
    assert line["ecs.version"] == telemetry.ECS_VERSION
    assert line["trace.id"] == format(ctx.trace_id, "032x")
    assert line["span.id"] == format(ctx.span_id, "016x")
    assert line["@timestamp"].endswith("Z")
    assert line["round"] == 3


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here once the socket is closed


def test_shipper_never_blocks_and_drops_oldest_when_es_is_down() -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        url = f"http://127.0.0.1:{_closed_port()}"
        shipper = telemetry.LogShipper(url, "unit", capacity=100, interval_s=0.05)
        began = time.perf_counter()
        for i in range(1000):
            shipper.offer(json.dumps({"message": f"line {i}"}))
        elapsed = time.perf_counter() - began
        time.sleep(0.5)
        shipper.close(1.0)
    assert elapsed < 0.5, f"offering 1000 lines took {elapsed:.3f}s"
    assert shipper.dropped >= 900
    assert len(shipper) <= 100
    warnings = [json.loads(x) for x in err.getvalue().splitlines() if "unreachable" in x]
    assert len(warnings) == 1  # one warning per outage, not one per attempt
