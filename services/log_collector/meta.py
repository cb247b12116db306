"""The attempt hash leaving Valkey: moved to ``meta.json`` once its attempt is archived, and
brought back from the file for a write that comes later.

The attempt hash (``keys.attempt_logs``: ``lines:<k>``, ``archive:<k>``, ``terminal_at``,
``first_failed_rank``, ``first_failed_at``) is the last of an attempt's output that Valkey
would keep once its ranks are archived (``archive.py``). ``Archiver.archive_ready`` queues each
attempt it archived wholly (``keys.log_meta_queue()``, scored by its terminal position's
milliseconds); ``Mover.move_ready`` takes the queued attempts whose terminal event the event
archive holds (their partition's pointer, ``services.core.archive.pointer``, at or past
``terminal_at``), writes each hash's fields to ``<archive_dir>/<run>/<attempt>/meta.json`` and
deletes the hash. Readers read the hash, else the file (``reading.attempt_meta``).

Invariants:
- The file is written whole (temporary file, fsync, rename, directory fsync) before the hash
  is deleted, and the hash is deleted only if it still holds exactly what was written (one
  script): a write in between keeps the hash, and a later pass moves it again. A crash between
  the file and the delete is finished by the next pass (the queue keeps the attempt until its
  hash is gone); readers find the same meta in the hash and in the file throughout.
- An attempt moves only when wholly archived (every rank's ``archive:<k>`` set and its stream
  gone) and its terminal event is in the event archive; until then its hash stays. The queue
  holds archived attempts still in Valkey, so a pass costs O(those), never a scan of keys.
- A hash that exists is whole. The log-collector writes attempt hashes only through scripts
  that refuse to create one (``Hashes.guarded``: ``ingest.py``'s ranks and counts,
  ``events.py``'s first failure and terminal event); refused, the writer brings the hash back
  from meta.json (``Hashes.restore``: all of the file's fields, only if the hash is still
  absent) and writes again, or, with no file, creates it (a new attempt). So a late line after
  the move (``ingest.py``: an agent that broke the protocol) is stored, counted and archived
  again just as before the move, and a reader never sees part of a hash. A restored attempt is
  queued here again, to leave once it is wholly archived again.
- meta.json is never deleted; a later move writes it again, whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis
import structlog

from events import keys
from events.model import run_aggregate
from services.core import archive
from services.core.durable import atomically
from services.log_collector.settings import LogCollectorSettings
from services.output import formats
from services.output.formats import Meta

log = structlog.get_logger(__name__)

QUEUE = keys.log_meta_queue()
#: What a guarded script returns, writing nothing, when the hash is absent and may not be made.
REFUSED = -1
_PAGE = 100
_MOVES = 500  # attempts looked at per pass, at most: the archiver's loop goes on meanwhile

#: A guarded write. KEYS[1]: an attempt hash. ARGV[1]: '1' if it may be created; then
#: (op, field, value) triples, op 'incr' (HINCRBY) or 'set' (HSET).
WRITE = """
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
for i = 2, #ARGV, 3 do
  if ARGV[i] == 'incr' then
    redis.call('HINCRBY', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  end
end
return 1
"""

# The hash back from its file (ARGV: field, value, ...), unless it exists again meanwhile.
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""

# Delete the hash if it holds exactly the fields and values of ARGV (field, value, ...).
_DELETE_IF_SAME = """
local now = redis.call('HGETALL', KEYS[1])
if #now ~= #ARGV then
  return 0
end
local written = {}
for i = 1, #ARGV, 2 do
  written[ARGV[i]] = ARGV[i + 1]
end
for i = 1, #now, 2 do
  if written[now[i]] ~= now[i + 1] then
    return 0
  end
end
redis.call('DEL', KEYS[1])
return 1
"""

#: One change to an attempt hash: ('incr', field, by) or ('set', field, value).
Op = tuple[str, str, str | int]


def write_args(may_create: bool, ops: Sequence[Op]) -> list[str | int]:
    """ARGV of ``WRITE``."""
    args: list[str | int] = ["1" if may_create else "0"]
    for op in ops:
        args += op
    return args


def _flat(meta: Meta) -> list[str]:
    return [part for field, value in sorted(meta.items()) for part in (field, value)]


def _member(run_id: str, attempt: int) -> str:
    return f"{run_id}/{attempt}"


async def queue(client: aioredis.Redis, run_id: str, attempt: int, terminal: str) -> None:
    """Queue an archived attempt to move once the event archive holds ``terminal``."""
    await client.zadd(QUEUE, {_member(run_id, attempt): archive.parse(terminal)[0]})


class Hashes:
    """Writes to attempt hashes that never make part of one whose attempt moved to a file."""

    def __init__(self, client: aioredis.Redis, archive_dir: Path) -> None:
        self.client = client
        self.archive_dir = archive_dir
        self.write_script = client.register_script(WRITE)
        self._restore = client.register_script(_RESTORE)

    async def write(self, run_id: str, attempt: int, ops: Sequence[Op]) -> None:
        meta = keys.attempt_logs(run_id, attempt)
        await self.guarded(
            run_id,
            attempt,
            lambda may_create: self.write_script(keys=[meta], args=write_args(may_create, ops)),
        )

    async def guarded(
        self, run_id: str, attempt: int, write: Callable[[bool], Awaitable[object]]
    ) -> object:
        """``write(may_create)``, a script that returns ``REFUSED`` (writing nothing) while the
        hash is absent and may not be created, until it writes: a hash that moved is brought
        back from its file first; with no file, the hash is new and created. Its result."""
        may_create = False
        while (result := await write(may_create)) == REFUSED:
            may_create = not await self.restore(run_id, attempt)
        return result

    async def restore(self, run_id: str, attempt: int) -> bool:
        """Bring the hash back from meta.json if it is absent; False if there is no file (the
        attempt never moved)."""
        path = self.archive_dir / formats.meta_path(run_id, attempt)
        moved = await asyncio.to_thread(formats.read_meta_file, path)
        if not moved:  # an empty one is never written: treated as none, so writers go on
            return False
        meta = keys.attempt_logs(run_id, attempt)
        if await self._restore(keys=[meta], args=_flat(moved)):
            log.warning("meta.restored", run=run_id, attempt=attempt, hint="a write after the move")
            if (terminal := moved.get(formats.TERMINAL_AT)) is not None:
                await queue(self.client, run_id, attempt, terminal)
        return True


class Mover:
    """Moves the hashes of archived attempts to their files (``move_ready``, each pass)."""

    def __init__(self, client: aioredis.Redis, settings: LogCollectorSettings) -> None:
        self.client = client
        self.archive_dir = settings.archive_dir
        self.partitions = settings.partitions
        self._delete_if_same = client.register_script(_DELETE_IF_SAME)
        self._flagged = False

    async def move_ready(self, stop: asyncio.Event | None = None) -> int:
        """Move the queued attempts the event archive covers; how many left the queue."""
        covered = [await archive.pointer(self.client, p) for p in range(self.partitions)]
        upto = [archive.parse(found.last) for found in covered if found is not None]
        if not upto:
            return 0  # no event archive: nothing may move
        moved = kept = 0
        while moved + kept < _MOVES and not (stop is not None and stop.is_set()):
            page = cast(
                list[bytes],
                await self.client.zrange(
                    QUEUE, 0, max(upto)[0], byscore=True, offset=kept, num=_PAGE
                ),
            )
            if not page:
                break
            for member in page:
                run_id, _, attempt = member.decode().rpartition("/")
                partition = keys.partition_of(run_aggregate(run_id), self.partitions)
                pointer = covered[partition]
                last = archive.parse(pointer.last) if pointer is not None else None
                with structlog.contextvars.bound_contextvars(run=run_id, attempt=int(attempt)):
                    done = await self.move_attempt(run_id, int(attempt), last)
                if done:
                    moved += 1
                else:
                    kept += 1
        return moved

    async def move_attempt(
        self, run_id: str, attempt: int, archived_upto: archive.Position | None
    ) -> bool:
        """Move the attempt's hash to its file if it may go; whether it left the queue (False:
        it stays queued for a later pass)."""
        key = keys.attempt_logs(run_id, attempt)
        stored = cast(dict[bytes, bytes], await self.client.hgetall(key))
        meta = {field.decode(): value.decode() for field, value in stored.items()}
        terminal = meta.get(formats.TERMINAL_AT)
        if terminal is not None and (
            archived_upto is None or archived_upto < archive.parse(terminal)
        ):
            return False  # its terminal event is not in the event archive yet
        if meta and (terminal is None or not await self._wholly_archived(run_id, attempt, meta)):
            # Lines came after the archive: the archiver has it queued, and queues it here again
            # once it is archived again. (No terminal: it came back without one; see restore.)
            await self.client.zrem(QUEUE, _member(run_id, attempt))
            return True
        if meta:
            if not self._flagged:  # before the first hash goes (reading.attempt_meta)
                await self.client.set(keys.log_meta_moved(), 1)
                self._flagged = True
            path = self.archive_dir / formats.meta_path(run_id, attempt)
            await asyncio.to_thread(write_file, path, meta)
            if not await self._delete_if_same(keys=[key], args=_flat(meta)):
                log.info("meta.changed", hint="written meanwhile: moved again by a later pass")
                return False
            log.info("meta.moved", path=str(formats.meta_path(run_id, attempt)))
        # else moved already (a crash between the delete and this ZREM), or never there
        await self.client.zrem(QUEUE, _member(run_id, attempt))
        return True

    async def _wholly_archived(self, run_id: str, attempt: int, meta: Meta) -> bool:
        ranks = formats.ranks_of(meta)
        if any(formats.archive_field(rank) not in meta for rank in ranks):
            return False
        pipe = self.client.pipeline(transaction=False)
        for rank in ranks:
            pipe.exists(keys.rank_log(run_id, attempt, rank))
        return not any(await pipe.execute())


def write_file(path: Path, meta: Meta) -> None:
    """Write ``meta`` to ``path`` whole, safely (temporary file, fsync, rename, dir fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomically(path, lambda tmp: Path(tmp).write_bytes(formats.encode_meta(meta)))
