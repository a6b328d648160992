"""Verifying a stream's hash chain: on demand (`qflare audit verify`) and periodically.

Both check every link and checkpoint signature, then compare the chain with signed heads
(``services.audit.chain.against_heads``): the CLI with the heads on the topic or in a head file,
under a key pinned by fingerprint; the service with the last head it published itself, under its
own key. The periodic check exports its verdict as metrics (chain intact, failures, time of the
last check), which is what the "audit verification failure" alert watches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from qflare import metrics
from qflare.clock import now_ms
from qflare.crypto import signature_backend
from services.audit.chain import Verdict, Vouched, against_heads, verify
from services.audit.store import AuditStore

log = structlog.get_logger("qflare.audit")


async def verify_stream(dsn: str, stream: str, public_key: bytes, heads: Sequence[Vouched] = ()) -> Verdict:
    """Walk the stored chain of ``stream``: links, checkpoint signatures, then the signed ``heads``."""
    backend = signature_backend()

    def check(message: bytes, signature: bytes) -> bool:
        return backend.verify(public_key, message, signature)

    store = await AuditStore.connect(dsn, stream)
    try:
        entries = [e async for e in store.walk()]
    finally:
        await store.close()
    return against_heads(stream, entries, verify(stream, entries, check), heads)


def record(stream: str, verdict: Verdict) -> None:
    metrics.AUDIT_CHAIN_INTACT.labels(stream).set(1 if verdict.ok else 0)
    metrics.AUDIT_LAST_VERIFIED.labels(stream).set(time.time())
    if not verdict.ok:
        metrics.AUDIT_VERIFY_FAILURES.labels(stream).inc()
        log.error("audit chain verification failed", stream=stream, verdict=verdict.line(stream))


async def verify_forever(
    dsn: str,
    stream: str,
    public_key: bytes,
    interval_s: float,
    published: Callable[[], tuple[int, bytes] | None],
) -> None:
    """Every ``interval_s``, verify the chain against the head this service last published."""
    while True:
        await asyncio.sleep(interval_s)
        # Read before the walk: the chain may grow meanwhile, never shrink.
        head = published()
        heads = [] if head is None else [Vouched(head[0], head[1], "last published", now_ms())]
        record(stream, await verify_stream(dsn, stream, public_key, heads))
