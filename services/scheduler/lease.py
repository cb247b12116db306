"""The scheduler's lease: one active instance, the others stand by.

The lease is one key (``events.keys.scheduler_lease()``) holding the active instance's token,
a fresh uuid per instance. It is taken with ``SET NX PX``, renewed (compare-and-pexpire) well
within its expiry, and released (compare-and-delete) on a clean stop, so a standby takes over at
once instead of after the expiry. The token is also the fencing token of every append: a paused
instance whose lease expired cannot write even before it notices (``services.core.store``).
"""

from __future__ import annotations

import redis.asyncio as aioredis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseLost(Exception):
    """Another instance holds the lease (or it expired): stop acting, stand by."""


class Lease:
    def __init__(self, client: aioredis.Redis, key: str, token: str, ttl_ms: int) -> None:
        self.client = client
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True also if this instance holds it already."""
        if await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return await self.renew()

    async def renew(self) -> bool:
        return bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.token])

    async def holder(self) -> str | None:
        value = await self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
