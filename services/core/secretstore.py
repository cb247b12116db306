"""Where sealed secret values live: one hash per owner (``keys.secret_values``), name -> the
sealed value (``services.core.sealing``). The API server writes it, node-agents read it, the
operator's key rotation rewrites it; the ACL lets no other service near it.

Invariants:
- A value is replaced or removed only if it is still the one the writer read (WATCH, then a
  transaction): a create, a delete and a rotation racing on one secret never undo each other.
- Nothing here opens a value: it moves sealed bytes (the readable part is read with ``peek``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from events import keys
from services.core.sealing import SealingError, peek

_TRIES = 50
_SCAN = 200


class SecretValues:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client

    async def put(self, owner: str, name: str, sealed: bytes) -> None:
        await self.redis.hset(keys.secret_values(owner), name, sealed)

    async def get(self, owner: str, name: str) -> bytes | None:
        return cast(bytes | None, await self.redis.hget(keys.secret_values(owner), name))

    async def all(self, owner: str) -> dict[str, bytes]:
        """Every sealed value of ``owner``, by name."""
        found = cast(dict[bytes, bytes], await self.redis.hgetall(keys.secret_values(owner)))
        return {name.decode(): value for name, value in found.items()}

    async def remove(self, owner: str, name: str, secret_id: str | None = None) -> bool:
        """Remove ``owner``'s value ``name`` if it is secret ``secret_id``'s (any, for None, or
        a value that is no sealed value at all); whether one was removed."""

        def wanted(current: bytes) -> bool:
            return secret_id is None or _secret_id(current) in (secret_id, None)

        return await self._swap(owner, name, wanted, None)

    async def replace(self, owner: str, name: str, expected: bytes, new: bytes) -> bool:
        """Put ``new`` in place of ``owner``'s value ``name`` if it is still ``expected``."""
        return await self._swap(owner, name, lambda current: current == expected, new)

    async def _swap(
        self, owner: str, name: str, wanted: Callable[[bytes], bool], new: bytes | None
    ) -> bool:
        key = keys.secret_values(owner)
        for _ in range(_TRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = cast(bytes | None, await pipe.hget(key, name))
                    if current is None or not wanted(current):
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if new is None:
                        pipe.hdel(key, name)
                    else:
                        pipe.hset(key, name, new)
                    await pipe.execute()
                except WatchError:
                    continue  # another write to this owner's hash: read again
                return True
        raise RuntimeError(f"secret {name} of {owner}: the value kept changing; try again")

    async def owners(self) -> AsyncIterator[str]:
        """Every owner with a stored value (a SCAN: the operator's command, not a service's)."""
        prefix = keys.secret_values("")
        async for raw in self.redis.scan_iter(match=keys.secret_values(keys.ANY), count=_SCAN):
            yield (raw.decode() if isinstance(raw, bytes) else str(raw)).removeprefix(prefix)


def _secret_id(data: bytes) -> str | None:
    try:
        return peek(data).secret_id
    except SealingError:
        return None
