"""Run the real audit service as a process, feed it signed records, read its chain and index back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from elasticsearch import AsyncElasticsearch

from qflare.children import ServiceProcess
from qflare.crypto import read_key
from qflare.identity import Identity, key_path, load_identity
from qflare.kafka import KafkaSettings, make_producer, prepare_topics
from qflare.protocol import Body, seal
from services.audit.chain import Entry, genesis, make_entry
from services.audit.config import AuditSettings
from services.audit.indexer import index_base
from services.audit.store import AuditStore
from tests.integration.services.harness import channel_for
from tests.integration.services.processes import ManagedService

ES_URL = AuditSettings().elasticsearch_url
DSN = AuditSettings().postgres_dsn


@dataclass
class AuditProcess(ManagedService):
    """``python -m services.audit`` with its own topics, chain (stream) and keys."""

    service = "audit"

    kafka: KafkaSettings
    keys_dir: Path
    log_path: Path
    checkpoint_every: int = 5
    es_url: str = ES_URL
    #: /metrics and /healthz (the readiness probe); 0: any free port, read back once started.
    metrics_port: int = 0
    proc: ServiceProcess | None = None
    starts: int = 0

    @property
    def head_file(self) -> Path:
        """Where this audit service appends its signed heads (next to its log)."""
        return self.log_path.with_name(f"{self.log_path.stem}.heads.jsonl")

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "QFLARE_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "QFLARE_KAFKA_DEPLOYMENT_ID": self.kafka.deployment_id,
            "QFLARE_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "QFLARE_AUDIT_KEYS_DIR": str(self.keys_dir),
            "QFLARE_AUDIT_CHECKPOINT_EVERY": str(self.checkpoint_every),
            "QFLARE_AUDIT_HEAD_FILE_PATH": str(self.head_file),
            "QFLARE_AUDIT_HEAD_INTERVAL_S": "0.1",
            "QFLARE_AUDIT_ELASTICSEARCH_URL": self.es_url,
            "QFLARE_AUDIT_INDEX_INTERVAL_S": "0.2",
        }


@dataclass
class Publisher:
    """Stand-ins for the other services, each signing with its own trusted key."""

    kafka: KafkaSettings
    keys_dir: Path

    def __post_init__(self) -> None:
        self.topics = self.kafka.topics
        self.ids: dict[str, Identity] = {}

    def identity(self, name: str) -> Identity:
        if name not in self.ids:
            self.ids[name] = load_identity(name, self.keys_dir, create=True)
        return self.ids[name]

    async def start(self) -> None:
        await prepare_topics(self.kafka)
        self.producer = make_producer(self.kafka)
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    def seal(self, who: str, body: Body, round: int | None = None) -> bytes:
        ident = self.identity(who)
        return seal(body, ident.signer, channel_for(self.topics, body), sender=ident.name, round=round)

    async def send(self, topic: str, key: str, *records: bytes) -> None:
        for record in records:
            await self.producer.send_and_wait(topic, record, key=key.encode())


def audit_fingerprint(keys_dir: Path) -> str:
    """The audit key's fingerprint as the audit host shows it (read from its private key file)."""
    return f"SHA256:{read_key(key_path('audit', keys_dir)).fingerprint}"


async def chain(stream: str) -> list[Entry]:
    store = await AuditStore.connect(DSN, stream)
    try:
        return [e async for e in store.walk()]
    finally:
        await store.close()


async def wait_chain(stream: str, until: Callable[[list[Entry]], bool], timeout_s: float = 60) -> list[Entry]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await chain(stream)
        if until(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"chain condition not met in {timeout_s} s: {[e.event.type for e in got]}")
        await asyncio.sleep(0.3)


async def search(
    stream: str, query: dict[str, Any], timeout_s: float = 60, want: int = 1
) -> list[dict[str, Any]]:
    """Documents of the stream's indices matching ``query``, once at least ``want`` exist."""
    es = AsyncElasticsearch(ES_URL)
    pattern = f"{index_base(stream, AuditSettings().index_prefix)}-*"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            await es.indices.refresh(index=pattern, allow_no_indices=True)
            found = await es.search(index=pattern, query=query, size=1000, allow_no_indices=True)
            hits = [h["_source"] for h in found["hits"]["hits"]]
            if len(hits) >= want or time.monotonic() > deadline:
                return sorted(hits, key=lambda h: h["event"]["sequence"])
            await asyncio.sleep(0.3)
    finally:
        await es.close()


async def drop_indices(stream: str) -> None:
    es = AsyncElasticsearch(ES_URL)
    base = index_base(stream, AuditSettings().index_prefix)
    try:
        await es.indices.delete(index=f"{base}-*", allow_no_indices=True, ignore_unavailable=True)
        await es.options(ignore_status=404).indices.delete_index_template(name=f"{base}-template")
    finally:
        await es.close()


# --- tampering with a stored chain, as someone with write access to the database would -----------


def run_verify(
    stream: str, keys_dir: Path, *extra: str, pin: bool = True
) -> subprocess.CompletedProcess[str]:
    """``qflare audit verify`` for ``stream`` in a process of its own, pinned to the audit key."""
    pinned = ("--key-fingerprint", audit_fingerprint(keys_dir)) if pin else ()
    args = ("verify", "--stream", stream, "--keys-dir", str(keys_dir), *pinned, *extra)
    return subprocess.run(
        [sys.executable, "-c", "from services.audit.cli import app; app()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "QFLARE_AUDIT_KEY_FINGERPRINT"},
    )


def heads_in_file(path: Path) -> list[int]:
    """The seqs of the heads appended to a head file, in order."""
    if not path.exists():
        return []
    return [int(json.loads(line)["seq"]) for line in path.read_text().splitlines()]


async def wait_head(audit: AuditProcess, stream: str, timeout_s: float = 60) -> int:
    """Wait until the chain is quiet and its last entry is vouched for by a published head."""
    deadline = time.monotonic() + timeout_s
    while True:
        length = len(await chain(stream))
        if length and heads_in_file(audit.head_file)[-1:] == [length]:
            return length
        if time.monotonic() > deadline:
            raise AssertionError(f"no head at seq {length}: {heads_in_file(audit.head_file)[-5:]}")
        await asyncio.sleep(0.3)


def delete_after(stream: str, seq: int) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DELETE FROM audit.chain WHERE stream = %s AND seq > %s", (stream, seq))


async def rewrite_from(stream: str, seq: int, reason: str) -> None:
    """Change entry ``seq``'s reason and re-link it and every later entry, so every link holds."""
    entries = await chain(stream)
    prev = (seq - 1, entries[seq - 2].hash if seq > 1 else genesis(stream))
    with psycopg.connect(DSN, autocommit=True) as conn:
        for old in entries[seq - 1 :]:
            event = replace(old.event, reason=reason) if old.seq == seq else old.event
            new = make_entry(prev, event)
            conn.execute(
                "UPDATE audit.chain SET reason = %s, event_digest = %s, prev_hash = %s, hash = %s "
                "WHERE stream = %s AND seq = %s",
                (event.reason, new.event_digest, new.prev_hash, new.hash, stream, old.seq),
            )
            prev = (new.seq, new.hash)
