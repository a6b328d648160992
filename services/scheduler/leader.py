"""Leadership: a Redis lease with a fencing token.

Only the holder of the lease runs the scheduler's faust worker. Each new leader
gets a strictly larger fencing token (``INCR``), which it stamps on every
round task (``RoundTask.fencing_token``), so the aggregator can refuse a deposed
leader's late tasks.
"""

from __future__ import annotations

import asyncio
import secrets

import redis.asyncio as aioredis

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class Lease:
    def __init__(self, client: aioredis.Redis, key: str, lease_s: float) -> None:
        self.redis = client
        self.key = key
        self.lease_ms = int(lease_s * 1000)
        self.token = secrets.token_hex(16)
        self.fence = 0

    async def acquire(self, poll_s: float = 1.0) -> int:
        """Wait until this process holds the lease; returns its fencing token."""
        while not await self.redis.set(self.key, self.token, nx=True, px=self.lease_ms):
            await asyncio.sleep(poll_s)
        self.fence = int(await self.redis.incr(f"{self.key}:fence"))
        return self.fence

    async def renew(self) -> bool:
        """Extend the lease; False means it was lost (another leader may exist)."""
        renewed = await self.redis.eval(_RENEW, 1, self.key, self.token, str(self.lease_ms))
        return bool(renewed)

    async def release(self) -> None:
        await self.redis.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
            1,
            self.key,
            self.token,
        )
