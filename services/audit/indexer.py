"""Elasticsearch, derived from the chain: ECS documents in daily indices, caught up in the background.

PostgreSQL is the source of truth. ``audit.indexed`` holds the highest seq known to be
in Elasticsearch; the indexer bulk-indexes everything after it, so an outage only delays
the index and never blocks intake. Document ids are ``<stream>:<seq>``: indexing the
same entry twice (a crash between bulk and mark, or ``qflare audit reindex``) overwrites.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import structlog
from elasticsearch import AsyncElasticsearch
from elasticsearch import TransportError as EsTransportError
from elasticsearch.exceptions import ApiError
from elasticsearch.helpers import BulkIndexError, async_bulk

from qflare.errors import is_transient
from services.audit import metrics
from services.audit.chain import Entry
from services.audit.store import AuditStore

log = structlog.get_logger("qflare.audit")
#: What an unreachable or refusing Elasticsearch raises; the indexer retries later.
ES_ERRORS = (EsTransportError, ApiError, BulkIndexError, OSError, asyncio.TimeoutError)
_BAD = re.compile(r"[^a-z0-9_.-]+")

MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "@timestamp": {"type": "date", "format": "epoch_millis||strict_date_optional_time"},
        "event": {
            "properties": {
                "action": {"type": "keyword"},
                "outcome": {"type": "keyword"},
                "reason": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}},
                "sequence": {"type": "long"},
                "dataset": {"type": "keyword"},
                "kind": {"type": "keyword"},
                "hash": {"type": "keyword"},
            }
        },
        "service": {"properties": {"name": {"type": "keyword"}}},
        "user": {"properties": {"name": {"type": "keyword"}}},
        "trace": {"properties": {"id": {"type": "keyword"}}},
        "qflare": {
            "properties": {
                "stream": {"type": "keyword"},
                "actor": {"type": "keyword"},
                "round": {"type": "long"},
                "job_id": {"type": "keyword"},
                "subject": {"type": "keyword"},
                "ref_id": {"type": "keyword"},
                "hash": {"type": "keyword"},
                "source": {
                    "properties": {
                        "topic": {"type": "keyword"},
                        "partition": {"type": "integer"},
                        "offset": {"type": "long"},
                    }
                },
                "detail": {"type": "flattened"},
            }
        },
    },
}


def index_base(stream: str, prefix: str) -> str:
    """The index name without its date: the topic prefix folded in, lowercased, made legal."""
    name = _BAD.sub("-", f"{stream}{prefix}".lower()).lstrip("-_+.")
    return name or "qflare-audit"


def index_name(stream: str, prefix: str, time_ms: int) -> str:
    day = datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y.%m.%d")
    return f"{index_base(stream, prefix)}-{day}"


def document(stream: str, entry: Entry) -> dict[str, Any]:
    e = entry.event
    doc: dict[str, Any] = {
        "@timestamp": e.time_ms,
        "event": {
            "action": e.type,
            "outcome": {"accepted": "success", "rejected": "failure"}.get(e.outcome, "unknown"),
            "reason": e.reason,
            "sequence": entry.seq,
            "dataset": "qflare.audit",
            "kind": "event",
            "hash": entry.hash.hex(),
        },
        "service": {"name": e.actor},
        "user": {"name": e.actor},
        "qflare": {
            "stream": stream,
            "actor": e.actor,
            "outcome": e.outcome,
            "round": e.round,
            "job_id": e.job,
            "subject": e.subject,
            "ref_id": None if e.ref_id is None else e.ref_id.hex(),
            "hash": entry.hash.hex(),
            "source": {"topic": e.source_topic, "partition": e.source_partition, "offset": e.source_offset},
            "detail": e.detail,
        },
    }
    trace = e.detail.get("trace_id")
    if isinstance(trace, str):
        doc["trace"] = {"id": trace}
    return doc


def actions(stream: str, prefix: str, entries: Iterable[Entry]) -> list[dict[str, Any]]:
    return [
        {
            "_op_type": "index",
            "_index": index_name(stream, prefix, e.event.time_ms),
            "_id": f"{stream}:{e.seq}",
            "_source": document(stream, e),
        }
        for e in entries
    ]


class Indexer:
    """The background catch-up: ``run`` forever, or ``catch_up`` once (the reindex command)."""

    def __init__(self, store: AuditStore, url: str, prefix: str, *, batch: int, interval_s: float) -> None:
        self.store, self.prefix = store, prefix
        self.batch, self.interval_s = batch, interval_s
        self.es = AsyncElasticsearch(url, request_timeout=10, retry_on_timeout=False, max_retries=0)
        self._template = False

    async def close(self) -> None:
        await self.es.close()

    async def install_template(self) -> None:
        base = index_base(self.store.stream, self.prefix)
        await self.es.indices.put_index_template(
            name=f"{base}-template",
            index_patterns=[f"{base}-*"],
            priority=200,
            template={"settings": {"number_of_replicas": 0}, "mappings": MAPPINGS},
        )
        self._template = True

    async def catch_up(self, after: int | None = None) -> int:
        """Index every entry after the mark (or ``after``); returns the new mark."""
        if not self._template:
            await self.install_template()
        mark = await self.store.indexed() if after is None else after
        while rows := await self.store.entries(mark, self.batch):
            await async_bulk(self.es, actions(self.store.stream, self.prefix, rows), refresh="wait_for")
            mark = rows[-1].seq
            await self.store.set_indexed(mark)
            metrics.INDEXED_SEQ.labels(self.store.stream).set(mark)
        return mark

    async def run(self) -> None:
        while True:
            try:
                await self.catch_up()
            except ES_ERRORS as exc:
                metrics.INDEX_ERRORS.inc()
                error = f"{type(exc).__name__}: {exc}"[:300]
                # Even a refusal does not stop the service: the index is derived, and the chain
                # (the truth) must keep taking entries. Only the log level tells them apart.
                if is_transient(exc):
                    log.warning("elasticsearch unavailable, will catch up", error=error)
                else:
                    log.error("elasticsearch refused the index; the chain is unaffected", error=error)
            await asyncio.sleep(self.interval_s)
