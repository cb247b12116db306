"""The ingest lease: one log-collector at a time copies lines, so each rank's lines are written
in id order (what makes "refused id" mean "already stored").

The lease is a key holding the holder's name with an expiry, renewed well before it expires.
A collector restarted under the same name takes its own lease back at once; another one waits
for it to expire. Released on a clean shutdown, so a standby takes over without waiting.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from events import keys

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

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, client: aioredis.Redis, holder: str, ttl_ms: int) -> None:
        self.key = keys.log_collector_lease()
        self.holder = holder
        self.ttl_ms = ttl_ms
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Take or renew the lease; True while we hold it."""
        return bool(await self._hold(keys=[self.key], args=[self.holder, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.holder])
