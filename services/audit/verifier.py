"""Verifying a stream's hash chain: on demand (`qflare audit verify`) and periodically.

The periodic check runs inside the audit service and exports its verdict as
metrics (chain intact, failures, time of the last check), which is what the
"audit verification failure" alert watches.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import structlog

from qflare import metrics
from qflare.crypto import read_key, signature_backend
from services.audit.chain import Verdict, verify
from services.audit.store import AuditStore

log = structlog.get_logger("qflare.audit")


async def verify_stream(dsn: str, stream: str, keys_dir: Path, identity: str = "audit") -> Verdict:
    """Walk the stored chain of ``stream`` and check every link and checkpoint signature."""
    pub = read_key(keys_dir / "trusted" / f"{identity}.pub")
    backend = signature_backend()

    def check(message: bytes, signature: bytes) -> bool:
        return backend.verify(pub.public_key, message, signature)

    store = await AuditStore.connect(dsn, stream)
    try:
        entries = [e async for e in store.walk()]
    finally:
        await store.close()
    return verify(stream, entries, check)


def record(stream: str, verdict: Verdict) -> None:
    metrics.AUDIT_CHAIN_INTACT.labels(stream).set(1 if verdict.ok else 0)
    metrics.AUDIT_LAST_VERIFIED.labels(stream).set(time.time())
    if not verdict.ok:
        metrics.AUDIT_VERIFY_FAILURES.labels(stream).inc()
        log.error("audit chain verification failed", stream=stream, verdict=verdict.line(stream))


async def verify_forever(dsn: str, stream: str, keys_dir: Path, identity: str, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        record(stream, await verify_stream(dsn, stream, keys_dir, identity))
