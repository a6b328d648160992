"""OpenTelemetry tracing shared by every QFLARE process, with W3C context in Kafka headers.

One trace per round: the scheduler opens it (:func:`round_span`) and puts its
context in the ``RoundTask`` record headers; a device continues it for its
training and update send; the aggregator's ``process`` spans continue each
update's context, and the aggregation span links to all of them (fan-in has no
single parent).

For any consumer (the audit service, say)::

    ctx = extract_context(record.headers)        # W3C traceparent from the record
    with process_span(record, group="audit"):    # or: tracer().start_as_current_span(..., context=ctx)
        ...

and for any producer::

    with send_span(topic) as headers:             # a "send <topic>" span, its context in headers
        await producer.send(topic, value, key=key, headers=headers)

Spans travel by OTLP gRPC to ``QFLARE_OTLP_ENDPOINT`` (default 127.0.0.1:4317,
``none`` disables). When the collector is down, services run on: spans are
dropped and counted in ``qflare_spans_dropped_total``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind
from prometheus_client import Counter

__all__ = [
    "SPANS_DROPPED",
    "FanIn",
    "Headers",
    "configure_tracing",
    "extract_context",
    "inject_headers",
    "process_span",
    "round_headers",
    "round_span",
    "send_span",
    "shutdown_tracing",
    "span_context_of",
    "tracer",
]

#: aiokafka's record header shape: a sequence of ``(key, bytes)`` pairs.
Headers = list[tuple[str, bytes]]
#: What consumers hand over: aiokafka's tuple of pairs, faust's list or dict, or nothing.
HeadersIn = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None

DEFAULT_OTLP_ENDPOINT = "127.0.0.1:4317"

SPANS_DROPPED = Counter(
    "qflare_spans_dropped_total", "Spans that could not be exported (collector unreachable)", ["service"]
)

_service = "qflare"
_provider: TracerProvider | None = None


class CountingExporter(SpanExporter):
    """Delegates to a real exporter and counts the spans of every failed export as dropped."""

    def __init__(self, inner: SpanExporter, service: str) -> None:
        self.inner = inner
        self.service = service

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except (OSError, RuntimeError, ValueError):
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            SPANS_DROPPED.labels(self.service).inc(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def configure_tracing(
    service: str, *, endpoint: str | None = None, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install the global tracer provider for ``service``; return it, or None when disabled.

    ``exporter`` replaces the OTLP exporter (tests use an in-memory one).
    """
    global _provider, _service
    _service = service
    if _provider is not None:
        return _provider
    target = endpoint or os.environ.get("QFLARE_OTLP_ENDPOINT", DEFAULT_OTLP_ENDPOINT)
    if exporter is None and target.strip().lower() == "none":
        return None
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        address = target if "://" in target else f"http://{target}"
        exporter = OTLPSpanExporter(endpoint=address, insecure=True, timeout=5)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    delay_ms = int(os.environ.get("QFLARE_OTLP_DELAY_MS", "1000"))
    provider.add_span_processor(
        BatchSpanProcessor(CountingExporter(exporter, service), schedule_delay_millis=delay_ms)
    )
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Flush what is queued (bounded by the exporter timeout) and stop the provider."""
    global _provider
    if _provider is not None:
        _provider.force_flush(5_000)
        _provider.shutdown()
        _provider = None


def tracer() -> trace.Tracer:
    return trace.get_tracer("qflare")


# -- W3C trace context <-> Kafka record headers -------------------------------------------
class _Getter:
    def get(self, carrier: dict[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: dict[str, str]) -> list[str]:
        return list(carrier)


def inject_headers(headers: Headers | None = None, *, context: Context | None = None) -> Headers:
    """The current (or given) context as Kafka headers (``traceparent``, ``tracestate``), appended."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    out = list(headers or [])
    out.extend((k, v.encode()) for k, v in carrier.items())
    return out


def extract_context(headers: HeadersIn) -> Context:
    """The W3C trace context carried by a record's headers (an empty context when none)."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    carrier = {k.lower(): v.decode(errors="replace") for k, v in pairs if v is not None}
    return propagate.extract(carrier, getter=_Getter())  # type: ignore[arg-type]


def span_context_of(headers: HeadersIn) -> SpanContext | None:
    """The remote span context in ``headers``, for a span link; None when absent."""
    found = trace.get_current_span(extract_context(headers)).get_span_context()
    return found if found.is_valid else None


#: Prefix of the headers that carry the round's own context next to a record's ``traceparent``:
#: a consumer that fans in (the aggregator) parents its span on the round, not on one record.
ROUND_PREFIX = "qflare-round-"


def round_headers(context: Context | None) -> Headers:
    """``context`` (the round task's) as ``qflare-round-traceparent`` style headers."""
    return [(ROUND_PREFIX + k, v) for k, v in inject_headers(context=context)] if context else []


@dataclass
class FanIn:
    """The round context and the record contexts that one fan-in span (aggregation) joins."""

    parent: SpanContext | None = None
    links: list[SpanContext] = field(default_factory=list)

    def add(self, headers: Iterable[tuple[str, bytes | None]] | None) -> None:
        pairs = list(headers or ())
        found = span_context_of(pairs)
        if found is not None:
            self.links.append(found)
        if self.parent is None:
            n = len(ROUND_PREFIX)
            self.parent = span_context_of([(k[n:], v) for k, v in pairs if k.startswith(ROUND_PREFIX)])

    def context(self) -> Context:
        return trace.set_span_in_context(NonRecordingSpan(self.parent)) if self.parent else Context()

    def span_links(self) -> list[Link]:
        return [Link(c) for c in self.links[:128]]


# -- spans named per the OTel messaging semantic conventions -----------------------------
def _messaging(topic: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
    }


@contextmanager
def send_span(
    topic: str, *, key: bytes | None = None, attributes: dict[str, Any] | None = None
) -> Iterator[Headers]:
    """A ``send <topic>`` producer span; yields the headers to put on the record."""
    attrs = _messaging(topic, "send")
    if key is not None:
        attrs["messaging.kafka.message.key"] = key.decode(errors="replace")
    attrs.update(attributes or {})
    with tracer().start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attrs):
        yield inject_headers()


@contextmanager
def process_span(
    record: Any,
    *,
    group: str | None = None,
    links: Sequence[SpanContext] = (),
    attributes: dict[str, Any] | None = None,
) -> Iterator[Span]:
    """A ``process <topic>`` consumer span continuing the trace in ``record.headers``.

    ``record`` is an aiokafka ``ConsumerRecord`` (topic, partition, offset, headers).
    """
    attrs = _messaging(record.topic, "process")
    attrs["messaging.kafka.destination.partition"] = record.partition
    attrs["messaging.kafka.message.offset"] = record.offset
    if group:
        attrs["messaging.consumer.group.name"] = group
    attrs.update(attributes or {})
    parent = extract_context(getattr(record, "headers", None))
    with tracer().start_as_current_span(
        f"process {record.topic}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attrs,
        links=[Link(c) for c in links],
    ) as span:
        yield span


@contextmanager
def round_span(job_id: str, round_no: int, name: str = "round") -> Iterator[Span]:
    """The root span of one round's trace, findable by ``qflare.round`` and ``qflare.job_id`` tags."""
    attrs = {"qflare.job_id": job_id, "qflare.round": str(round_no)}
    with tracer().start_as_current_span(
        f"{name} {round_no}", context=Context(), kind=SpanKind.INTERNAL, attributes=attrs
    ) as span:
        yield span
