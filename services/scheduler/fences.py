"""The scheduler's fences, one per partition of the log: a deposed scheduler appends nothing
after the scheduler that replaced it appended.

The append function reads its fence key inside the script, so an append to partition ``p``
must be fenced by a key of ``p``'s slot (``keys.scheduler_lease(p)``); no script may name keys
of two partitions (on a Valkey Cluster they live on different shards).

- The election is the lease on partition 0 (``keys.scheduler_lease(0)``, ``services.core.lease``);
  it is also partition 0's fence, its value the instance's token, as with one partition.
- A term: once elected, an instance draws a term number, ``INCR keys.scheduler_term()`` (in
  partition 0's slot) in one script with a check that the lease holds its token
  (``_TERM``). Terms therefore follow the elections: a term is drawn only while its instance
  holds the lease, so an instance elected later draws a greater one.
- Partition ``p >= 1``'s fence key holds ``<term>/<token>`` of the latest term that claimed
  it. An instance claims every such key before it replays the log and before its first
  append (``_CLAIM``: set only if the key holds a smaller term, or nothing). A key only ever
  moves to a greater term, so it needs no expiry and no renewal.

Why a deposed instance A (term a) cannot append to a partition after its successor B (term
b > a) appended there (monotonic fencing):
- Partition 0: an append needs the lease to hold A's token; B appends only while the lease holds
  B's (as with one partition).
- Partition ``p >= 1``: B's first append there comes after B's claim of the key, which left it
  at term b; from then on the key holds a term >= b forever, never ``a/<A's token>``, and the
  append function refuses A's appends (``Fenced``). A's claim attempts after that are refused
  too (a smaller term). So each of A's appends that landed on ``p`` landed before B's claim,
  hence before B replayed ``p`` (B's state has it) and before any of B's appends there.
- A could draw no term after B's election (the lease holds B's token then), so there is no
  later term of A's to claim with.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from events import keys
from services.core.lease import LeaseLost
from services.core.store import Fence

# Draw the next term, only while the lease (KEYS[1]) holds our token: the term, or 0.
_TERM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
return redis.call('INCR', KEYS[2])
"""
# Claim a partition's fence for ARGV[1] = '<term>/<token>' (term ARGV[2]): 1 if it is ours now.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  return 1
end
if held then
  local term = tonumber(string.match(held, '^(%d+)/'))
  if term and term >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class Fences:
    """One term's fences: the fence of each partition's appends."""

    def __init__(self, term: int, fences: list[Fence]) -> None:
        self.term = term
        self.fences = fences

    def of(self, aggregate: str) -> Fence:
        """The fence of appends to ``aggregate`` (its partition's)."""
        return self.fences[keys.partition_of(aggregate, len(self.fences))]


async def claim(client: aioredis.Redis, token: str, partitions: int) -> Fences:
    """Draw a term and claim every partition's fence for it; ``LeaseLost`` if this instance is
    no longer elected, or a later term claimed a fence already."""
    election = keys.scheduler_lease(0)
    term = int(await client.eval(_TERM, 2, election, keys.scheduler_term(), token))
    if term == 0:
        raise LeaseLost(f"{election} no longer holds this instance's token")
    fences = [Fence(election, token)]
    value = f"{term}/{token}"
    for partition in range(1, partitions):
        key = keys.scheduler_lease(partition)
        if not await client.eval(_CLAIM, 1, key, value, term):
            raise LeaseLost(f"a later term holds {key}")
        fences.append(Fence(key, value))
    return Fences(term, fences)
