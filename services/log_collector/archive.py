"""Archiving finished attempts: each rank's stream to a file, then the stream is deleted.

Invariants:
- An attempt is archived only once its terminal event was handled (``terminal_at`` in its
  hash, the attempt in the archive queue) and every ingest entry up to that event's position
  is stored and acknowledged: lines are ingested before the agent reports the rank's exit, so
  none can come after.
- A rank's file is written to a temporary name, fsynced, renamed over the final name and its
  directory fsynced; only then is the path recorded in the attempt hash, and only then are the
  archived entries deleted from the stream. A crash anywhere is redone from the start: the new
  file is the old file plus the stream's entries after the old file's last id, so a redo
  neither loses nor repeats a line.
- A line stored after its rank was archived (an agent that broke the protocol) is not lost: the
  stream is deleted only if its newest entry is the last one archived; otherwise only the
  archived entries are trimmed and the attempt is queued again.
- The ingest stream is trimmed below the first entry not yet acknowledged.
- Memory stays bounded: the stream is read and written page by page.
- An attempt archived wholly is queued to have its hash moved to a file once the event archive
  holds its terminal event (``meta.py``, every ``_MOVE_EVERY`` passes); an attempt queued
  again whose hash moved meanwhile (a late line) gets it back from the file first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from events import keys
from services.core.durable import fsync_path
from services.log_collector import meta
from services.log_collector.ingest import pause
from services.log_collector.settings import LogCollectorSettings
from services.output import formats, reading
from services.output.formats import Record
from services.output.reading import INGEST_GROUP

log = structlog.get_logger(__name__)

QUEUE = keys.log_archive_queue()
_PAGE = 1000
_MOVE_EVERY = 10  # passes of the loop between two passes of the mover (meta.py)

# Delete the stream if nothing came after the last archived entry, else trim what was archived.
_DELETE_THROUGH = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest == 0 or newest[1][1] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
return 0
"""

# Take an attempt off the queue unless it was queued again (a new score) while we archived it.
_DEQUEUE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

Pages = Callable[[str | None], AsyncIterator[list[Record]]]


async def write_archive(path: Path, pages: Pages) -> tuple[int, str | None]:
    """Write ``path``: its current records, then ``pages(last id)``; safely. Returns the
    number of records and the last id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by a crash
        stale.unlink()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    count, last = 0, None
    with tmp.open("wb") as out:
        if await asyncio.to_thread(path.exists):
            count, last = await asyncio.to_thread(_copy, path, out)
        async for page in pages(last):
            data = b"".join(formats.encode_record(record) for record in page)
            await asyncio.to_thread(out.write, data)
            count += len(page)
            last = page[-1].id
        await asyncio.to_thread(_flush, out)
    tmp.replace(path)
    await asyncio.to_thread(fsync_path, path.parent)
    return count, last


def _copy(path: Path, out: BinaryIO) -> tuple[int, str | None]:
    count, last_line = 0, b""
    with path.open("rb") as file:
        for line in file:
            out.write(line)
            count, last_line = count + 1, line
    return count, formats.decode_record(last_line).id if last_line else None


def _flush(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _next_id(entry_id: str | None) -> str:
    if entry_id is None:
        return "0-0"
    ms, seq = formats.id_key(entry_id)
    return f"{ms}-{seq + 1}"


class Archiver:
    def __init__(self, client: aioredis.Redis, settings: LogCollectorSettings) -> None:
        self.client = client
        self.settings = settings
        self.archive_dir = settings.archive_dir
        self._delete_through = client.register_script(_DELETE_THROUGH)
        self._dequeue = client.register_script(_DEQUEUE)
        self.hashes = meta.Hashes(client, settings.archive_dir)
        self.mover = meta.Mover(client, settings)

    async def run(self, stop: asyncio.Event) -> None:
        passes = 0
        while not stop.is_set():
            try:
                await self.trim_ingest()
                await self.archive_ready(stop)
                if passes % _MOVE_EVERY == 0:
                    await self.mover.move_ready(stop)
            except (RedisError, OSError) as exc:
                log.warning("archive.retry", error=repr(exc))
            passes += 1
            await pause(stop, self.settings.archive_poll_ms / 1000)

    async def archive_ready(self, stop: asyncio.Event | None = None) -> int:
        """Archive the queued attempts whose lines are all stored; how many were."""
        done = 0
        queued = await self.client.zrange(QUEUE, 0, 99, withscores=True, score_cast_func=bytes)
        for member, score in cast(list[tuple[bytes, bytes]], queued):
            if stop is not None and stop.is_set():
                break
            run_id, _, attempt_text = member.decode().rpartition("/")
            attempt = int(attempt_text)
            hashed = keys.attempt_logs(run_id, attempt)
            terminal = await reading.hget(self.client, hashed, formats.TERMINAL_AT)
            if terminal is None and await self.hashes.restore(run_id, attempt):
                # Its hash moved to a file, and a late line queued it again (a crash kept
                # the line's writer from bringing the hash back).
                terminal = await reading.hget(self.client, hashed, formats.TERMINAL_AT)
            if terminal is None:
                continue
            if not await reading.ingest_caught_up(self.client, terminal.decode()):
                continue  # some of its lines may still be on their way
            with structlog.contextvars.bound_contextvars(run=run_id, attempt=attempt):
                complete = await self.archive_attempt(run_id, attempt)
            if complete:  # else lines came in meanwhile: the next pass archives them
                await meta.queue(self.client, run_id, attempt, terminal.decode())
                done += await self._dequeue(keys=[QUEUE], args=[member, score])
        return done

    async def archive_attempt(self, run_id: str, attempt: int) -> bool:
        """Archive every rank of the attempt; False if some got lines meanwhile."""
        complete = True
        ranks = await reading.ranks(self.client, run_id, attempt)
        for rank in ranks:
            with structlog.contextvars.bound_contextvars(rank=rank):
                complete &= await self.archive_rank(run_id, attempt, rank)
        log.info("archive.attempt_done", ranks=len(ranks), complete=complete)
        return complete

    async def archive_rank(self, run_id: str, attempt: int, rank: int) -> bool:
        """Archive one rank; False if lines came after its archive (archive again later)."""
        hashed = keys.attempt_logs(run_id, attempt)
        stream = keys.rank_log(run_id, attempt, rank)
        relative = formats.archive_path(run_id, attempt, rank)
        archived = await reading.hget(self.client, hashed, formats.archive_field(rank))
        if archived is not None and not await self.client.exists(stream):
            return True  # archived already (a redo after a crash)

        async def pages(after: str | None) -> AsyncIterator[list[Record]]:
            start = "-" if after is None else f"({after}"
            while True:
                page = [
                    formats.record_of(i, f)
                    for i, f in await reading.xrange(self.client, stream, start, count=_PAGE)
                ]
                if page:
                    yield page
                if len(page) < _PAGE:
                    return
                start = f"({page[-1].id}"

        count, last = await write_archive(self.archive_dir / relative, pages)
        await self.hashes.write(
            run_id,
            attempt,
            [
                ("set", formats.archive_field(rank), str(relative)),
                ("set", formats.lines_field(rank), count),
            ],
        )
        deleted = await self._delete_through(keys=[stream], args=[last or "", _next_id(last)])
        log.info("archive.rank_done", lines=count, path=str(relative), deleted=bool(deleted))
        return bool(deleted)

    async def trim_ingest(self) -> None:
        """Drop ingest entries below the first one not yet acknowledged."""
        stream = keys.log_ingest()
        try:
            groups = await self.client.xinfo_groups(stream)
        except ResponseError:
            return  # no ingest stream yet
        group = next((g for g in groups if g["name"] == INGEST_GROUP.encode()), None)
        if group is None:
            return
        floor: bytes = group["last-delivered-id"]
        if group["pending"]:
            floor = (await self.client.xpending(stream, INGEST_GROUP))["min"] or floor
        if floor != b"0-0":
            with contextlib.suppress(ResponseError):
                await self.client.xtrim(stream, minid=floor, approximate=True)
