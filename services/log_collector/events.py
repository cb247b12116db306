"""What the log-collector takes from the event log: failed ranks and finished attempts.

Invariants:
- The first failed rank of an attempt is the rank of its first failing ``rank.exited`` in log
  order, whatever order the events are handled in (a redelivered older event still wins): the
  attempt hash keeps the position it came from and only an earlier position replaces it.
- A terminal event records its position (``terminal_at``) and queues the attempt for the
  archiver. Every effect is idempotent: redelivery is normal.
- Both write the attempt hash only if it exists, else bring it back from its file first (an
  event handled after the hash moved there), else create it (``meta.Hashes.guarded``): a hash
  that exists is whole.
"""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis
import structlog

from events import keys
from events.codec import Recorded
from events.model import ATTEMPT_ENDS, RankExited, RunEvent
from services.log_collector import meta
from services.output import formats

log = structlog.get_logger(__name__)

# Record (position, rank) unless a failure at an earlier position is recorded already; refused
# (meta.REFUSED) if the hash is absent and ARGV[5] is not '1' (it may not be created).
_FIRST_FAILURE = """
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local at = redis.call('HGET', KEYS[1], ARGV[3])
if at then
  local ms, seq = string.match(at, '(%d+)-(%d+)')
  local new_ms, new_seq = string.match(ARGV[1], '(%d+)-(%d+)')
  ms, seq, new_ms, new_seq = tonumber(ms), tonumber(seq), tonumber(new_ms), tonumber(new_seq)
  if ms < new_ms or (ms == new_ms and seq <= new_seq) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[1], ARGV[4], ARGV[2])
return 1
"""

_FAILURE_CATEGORIES = frozenset({"user", "system"})


def rank_failed(event: RankExited) -> bool:
    """A rank failed when a user or system reason is given, or, with no reason, when it exited
    non-zero or by a signal. Being stopped or preempted is not a failure of the rank."""
    if event.reason is not None:
        return event.reason.category in _FAILURE_CATEGORIES
    return event.exit_code not in (None, 0) or event.signal is not None


class EventHandler:
    #: The event types it acts on: its consumer passes the others undecoded.
    takes: frozenset[type] = frozenset({RankExited}) | ATTEMPT_ENDS

    def __init__(self, client: aioredis.Redis, archive_dir: Path) -> None:
        self.client = client
        self._first_failure = client.register_script(_FIRST_FAILURE)
        self.hashes = meta.Hashes(client, archive_dir)

    async def __call__(self, recorded: Recorded) -> None:
        event = recorded.event
        if isinstance(event, RankExited) and rank_failed(event):
            hashed = keys.attempt_logs(event.run_id, event.attempt)
            first = await self.hashes.guarded(
                event.run_id,
                event.attempt,
                lambda may_create: self._first_failure(
                    keys=[hashed],
                    args=[
                        recorded.position,
                        event.rank,
                        formats.FIRST_FAILED_AT,
                        formats.FIRST_FAILED_RANK,
                        "1" if may_create else "0",
                    ],
                ),
            )
            if first:
                log.info(
                    "logs.rank_failed_first",
                    run=event.run_id,
                    attempt=event.attempt,
                    rank=event.rank,
                    exit_code=event.exit_code,
                )
        elif isinstance(event, RunEvent) and type(event) in ATTEMPT_ENDS:
            terminal = ("set", formats.TERMINAL_AT, recorded.position)
            await self.hashes.write(event.run_id, event.attempt, [terminal])
            await self.client.zadd(
                keys.log_archive_queue(), {f"{event.run_id}/{event.attempt}": event.time}
            )
            log.info("logs.attempt_finished", run=event.run_id, attempt=event.attempt)
