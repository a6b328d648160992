"""Device liveness in Redis, and the health state derived from it.

Each heartbeat moves the device's score in a sorted set of last-seen times and
refreshes a per-device key with a TTL (``offline_after_s``), so liveness is
visible to an operator with plain ``redis-cli``. A periodic sweep derives
``online`` / ``stale`` / ``offline`` from the last-seen time and reports only
*changes*; the last published state per device lives in a Redis hash, so a
restarted registry neither forgets nor repeats transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

ONLINE, STALE, OFFLINE = "online", "stale", "offline"


def health_state(age_s: float, stale_after_s: float, offline_after_s: float) -> str:
    if age_s < stale_after_s:
        return ONLINE
    if age_s < offline_after_s:
        return STALE
    return OFFLINE


@dataclass(frozen=True)
class Transition:
    device_id: str
    state: str
    last_seen_ms: int


class Liveness:
    def __init__(
        self, client: aioredis.Redis, namespace: str, *, stale_after_s: float, offline_after_s: float
    ) -> None:
        self.redis = client
        self.last_seen_key = f"{namespace}:last_seen"
        self.health_key = f"{namespace}:health"
        self.alive_prefix = f"{namespace}:alive:"
        self.stale_after_s = stale_after_s
        self.offline_after_s = offline_after_s

    async def beat(self, seen: dict[str, int]) -> None:
        """Record heartbeats: device id -> time seen (ms). One round trip for a batch."""
        if not seen:
            return
        ttl_ms = int(self.offline_after_s * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.last_seen_key, {d: float(ts) for d, ts in seen.items()}, gt=True)
            for device_id in seen:
                pipe.set(self.alive_prefix + device_id, b"1", px=ttl_ms)
            await pipe.execute()

    async def forget(self, device_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.last_seen_key, device_id)
            pipe.hdel(self.health_key, device_id)
            pipe.delete(self.alive_prefix + device_id)
            await pipe.execute()

    async def transitions(self, now_ms: int) -> list[Transition]:
        """Health changes since the last ``commit``; publish them, then call ``commit``."""
        # The client is created without decode_responses, so members and values are bytes.
        scores = cast(
            list[tuple[bytes, float]], await self.redis.zrange(self.last_seen_key, 0, -1, withscores=True)
        )
        known = cast(dict[bytes, bytes], await self.redis.hgetall(self.health_key))
        changes = []
        for raw_id, score in scores:
            state = health_state((now_ms - score) / 1000, self.stale_after_s, self.offline_after_s)
            previous = known.get(raw_id)
            if previous is None or previous.decode() != state:
                changes.append(Transition(raw_id.decode(), state, int(score)))
        return changes

    async def commit(self, changes: list[Transition]) -> None:
        if changes:
            await self.redis.hset(self.health_key, mapping={c.device_id: c.state for c in changes})

    async def counts(self) -> dict[str, int]:
        states = await self.redis.hvals(self.health_key)
        result = {ONLINE: 0, STALE: 0, OFFLINE: 0}
        for state in states:
            key = state.decode() if isinstance(state, bytes) else str(state)
            result[key] = result.get(key, 0) + 1
        return result
