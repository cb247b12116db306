"""A lease: one active instance of a service, the others stand by.

The lease is one key holding the active instance's token, with an expiry. It is taken if free
or renewed if held in one step (``hold``), renewed only if still held (``renew``), and released
(compare-and-delete) on a clean stop, so a standby takes over at once instead of after the
expiry. The token is also a fencing token: a writer checks it on the server in the same step as
its write (the scheduler's appends, the projector's commits), so an instance paused past its
expiry writes nothing even before it notices it lost the lease.

Used by the scheduler (a fresh token per instance), the log-collector (its name: restarted under
the same name it takes its own lease back at once) and the projector.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

# Renew our lease, or take a free one: 1 if we hold it now, else 0.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
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
    """Another instance holds the lease (or it expired and could not be renewed): stand by."""


class Lease:
    def __init__(self, client: aioredis.Redis, key: str, token: str, ttl_ms: int) -> None:
        self.client = client
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms
        self._hold = client.register_script(_HOLD)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Take the lease if it is free, renew it if it is ours; True while we hold it."""
        return bool(await self._hold(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def renew(self) -> bool:
        """Renew the lease only if we still hold it."""
        return bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.token])

    async def holder(self) -> str | None:
        """Who holds the lease now (None: nobody)."""
        value = await self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    async def keep(self) -> None:
        """Renew at a third of the expiry until cancelled; raise ``LeaseLost`` once the lease
        is another's, or could not be renewed for a whole expiry (it may have passed)."""
        ttl_s = self.ttl_ms / 1000
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(ttl_s / 3)
            try:
                if not await self.renew():
                    raise LeaseLost(f"another instance holds {self.key}")
                renewed = time.monotonic()
            except (RedisError, OSError) as exc:
                if time.monotonic() - renewed > ttl_s:
                    raise LeaseLost(f"could not renew {self.key} for {ttl_s} s: {exc!r}") from exc
