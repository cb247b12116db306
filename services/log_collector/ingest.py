"""Copying the ingest stream into per-rank streams: read a batch, store it, then acknowledge it.

Invariants:
- A line is acknowledged only after its write to its rank's stream returned, so a crash in
  between redelivers it. Each write carries the ingest entry's id, and a stream refuses an id
  that is not above its top: a refused line whose id is in the stream was stored before and is
  not stored twice. (A refused id that is *not* in the stream can only come from a second
  collector writing out of order; the line is then stored at the end, marked ``late``.)
- Lines are copied in id order: on becoming active, the collector first takes over every pending
  entry of the group (those of a dead collector), then drains its own pending entries in order,
  and only then reads new ones. A failed batch is read again from the pending entries, and so
  is a batch whose reply was lost (the server died after recording the delivery, the client
  retried the read and got the next entries): after each read of new entries, an older entry
  still pending for this collector sends it back to its pending entries before storing any.
- Memory stays bounded by ``ingest_batch`` lines of at most ``MAX_LINE`` bytes.
- A line for an attempt already archived (an agent that broke the protocol) is stored and its
  attempt queued for the archiver again: nothing is lost, just late. Its attempt hash may have
  moved to a file (``meta.py``): the hash's writes here refuse to create it, and a refused
  attempt gets its hash back from the file (or, with none, a new one) before its ranks are
  counted. A brand-new attempt's ranks are thus marked just after its first lines are stored,
  before they are acknowledged. An attempt whose hash went between the marks and the lines
  (``lines:<k>`` gone after them) moved meanwhile, and counts as archived.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError

from events import keys
from services.core.aio import wait_event
from services.core.client import check_replicated, wait_after
from services.core.groups import ensure_group
from services.log_collector import meta
from services.log_collector.batch import Plan, RawEntry, Where, Write, plan
from services.log_collector.settings import LogCollectorSettings
from services.output import formats
from services.output.reading import INGEST_GROUP

log = structlog.get_logger(__name__)

INGEST = keys.log_ingest()
_CHUNK_BYTES = 4 << 20  # of lines per script call

# KEYS[1]: one rank's stream. ARGV: 4 values per line: id, source, line, marker ('' for none).
# Adds each line under its own id. A refused id already in the stream is a duplicate (a
# redelivery); one that is not is out of order. Returns {lines stored, {out-of-order ids}}.
_APPEND = """
local stored, missing = 0, {}
for i = 1, #ARGV, 4 do
  local id = ARGV[i]
  local r
  if ARGV[i + 3] == '' then
    r = redis.pcall('XADD', KEYS[1], id, 's', ARGV[i + 1], 'l', ARGV[i + 2])
  else
    r = redis.pcall('XADD', KEYS[1], id, 's', ARGV[i + 1], 'l', ARGV[i + 2], 'm', ARGV[i + 3])
  end
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'equal or smaller', 1, true) then
      return r
    end
    if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
      missing[#missing + 1] = id
    end
  else
    stored = stored + 1
  end
end
return {stored, missing}
"""


class Ingester:
    def __init__(self, client: aioredis.Redis, settings: LogCollectorSettings) -> None:
        self.client = client
        self.settings = settings
        self.name = settings.collector_name
        self.stored = 0  # lines stored by this process, for the logs
        self._append = client.register_script(_APPEND)
        self.hashes = meta.Hashes(client, settings.archive_dir)

    async def run(self, stop: asyncio.Event) -> None:
        """Copy lines until ``stop`` is set (the batch in hand is finished first)."""
        cursor = b""  # b"": take over pending entries first; then b"0"...: drain ours; b">": new
        while not stop.is_set():
            try:
                if not cursor:
                    await self._take_over_pending()
                    cursor = b"0"
                block = self.settings.ingest_block_ms if cursor == b">" else None
                reply = await self.client.xreadgroup(
                    INGEST_GROUP,
                    self.name,
                    {INGEST: cursor},
                    count=self.settings.ingest_batch,
                    block=block,
                )
                entries = cast(list[list[Any]], reply)[0][1] if reply else []
                if cursor == b">" and await self._left_pending(entries[0][0] if entries else None):
                    cursor = b"0"  # store them first, then these, in order
                    continue
                if entries:
                    await self.store(cast(list[RawEntry], entries))
                if cursor != b">":
                    cursor = entries[-1][0] if entries else b">"
            except (RedisError, OSError) as exc:
                log.warning("ingest.retry", error=repr(exc))
                cursor = b"0"  # read the failed batch again, from our pending entries
                if "NOGROUP" in str(exc):  # the server lost its data: start again from 0
                    with contextlib.suppress(RedisError, OSError):
                        await ensure_group(self.client, INGEST, INGEST_GROUP)
                await pause(stop, 0.5)

    async def _left_pending(self, before: bytes | None) -> bool:
        """Whether entries (below ``before``) were delivered to us but never handed to us: a
        read whose reply the server's death (or a dropped connection) lost, which the client
        then retried. They are read again from our pending entries, or they would never be
        stored."""
        left = await self.client.xpending_range(
            INGEST,
            INGEST_GROUP,
            min="-",
            max="+" if before is None else b"(" + before,
            count=1,
            consumername=self.name,
        )
        if left:
            log.warning("ingest.lost_delivery", first=repr(left[0]["message_id"]))
        return bool(left)

    async def _take_over_pending(self) -> None:
        """Claim every entry other consumers of the group left pending (a dead collector's)."""
        start: bytes | str = "0-0"
        claimed = 0
        while True:
            reply: list[Any] = await self.client.execute_command(  # type: ignore[no-untyped-call]
                "XAUTOCLAIM", INGEST, INGEST_GROUP, self.name, 0, start, "COUNT", 1000
            )
            claimed += len(reply[1])
            start = reply[0]
            if start in (b"0-0", "0-0"):
                break
        if claimed:
            log.info("ingest.took_over_pending", entries=claimed)

    async def store(self, entries: list[RawEntry]) -> None:
        """Store one batch in the per-rank streams, then acknowledge it."""
        batch = plan(entries)
        counts, after_archive = await self._write(batch)
        per_attempt: dict[tuple[str, int], list[meta.Op]] = {}
        for (run_id, attempt, rank), count in counts.items():
            per_attempt.setdefault((run_id, attempt), []).append(
                ("incr", formats.lines_field(rank), count)
            )
        pipe = self.client.pipeline(transaction=False)
        for (run_id, attempt), ops in per_attempt.items():
            args = meta.write_args(False, ops)
            hashed = keys.attempt_logs(run_id, attempt)
            await self.hashes.write_script(keys=[hashed], args=args, client=pipe)
        for run_id, attempt in after_archive:  # archive it again: nothing is lost, just late
            log.warning("ingest.line_after_archive", run=run_id, attempt=attempt)
            pipe.zadd(keys.log_archive_queue(), {f"{run_id}/{attempt}": time.time() * 1000})
        for reject in batch.rejects:
            log.error("ingest.dead_letter", position=reject.id.decode(), error=reject.why)
            letter = {b"stream": INGEST, b"position": reject.id, b"error": reject.why}
            letter.update({b"field:" + name: value for name, value in reject.fields.items()})
            pipe.xadd(keys.dead_letter_stream(INGEST_GROUP), letter)  # type: ignore[arg-type]
        pipe.xack(INGEST, INGEST_GROUP, *(entry_id for entry_id, _ in entries))
        results = await pipe.execute()
        counted = results[: len(per_attempt)]
        for ((run_id, attempt), ops), result in zip(per_attempt.items(), counted, strict=True):
            if result == meta.REFUSED:  # its hash moved after the marks: back from the file
                await self.hashes.write(run_id, attempt, ops)
        self.stored += sum(counts.values())

    async def _write(self, batch: Plan) -> tuple[Counter[Where], list[tuple[str, int]]]:
        """Write the lines; the lines stored per rank, and the attempts archived already."""
        attempts = [(key, sorted(ranks)) for key, ranks in batch.ranks.items()]
        chunks = _chunks(batch.writes)
        pipe = self.client.pipeline(transaction=False)
        for (run_id, attempt), ranks in attempts:  # the ranks seen, marked before any line
            # (unless the hash is absent: it is made or brought back below, after the lines)
            hashed = keys.attempt_logs(run_id, attempt)
            args = meta.write_args(False, _marks(ranks))
            await self.hashes.write_script(keys=[hashed], args=args, client=pipe)
        for chunk in chunks:
            await self._append(keys=[chunk[0].stream], args=_script_args(chunk), client=pipe)
        for (run_id, attempt), ranks in attempts:  # after the lines: were they too late?
            fields = [formats.archive_field(rank) for rank in ranks]
            fields += [formats.lines_field(rank) for rank in ranks]
            pipe.hmget(keys.attempt_logs(run_id, attempt), fields)
        # On the replicas before the batch is acknowledged (a copy again is harmless).
        waits = await wait_after(pipe, self.client, [chunk[0].stream for chunk in chunks])
        try:
            results = await pipe.execute()
        except NoScriptError:
            # A cluster's pipeline does not load scripts as a server's does, and a node started
            # again or a replica promoted has none: load it on every primary; the batch is
            # taken again.
            await self.client.script_load(_APPEND)
            await self.client.script_load(meta.WRITE)
            raise
        check_replicated(self.client, results[len(results) - waits :])
        del results[len(results) - waits :]
        marks = results[: len(attempts)]
        appended = results[len(attempts) : len(attempts) + len(chunks)]
        archived = results[len(attempts) + len(chunks) :]

        counts: Counter[Where] = Counter()
        late: list[Write] = []
        for chunk, (stored, missing) in zip(chunks, appended, strict=True):
            counts[chunk[0].where] += stored
            if missing:
                out_of_order = set(missing)
                late += [write for write in chunk if write.id in out_of_order]
        await self._store_late(late)
        for write in late:
            counts[write.where] += 1
        after_archive = []
        for (key, ranks), marked, found in zip(attempts, marks, archived, strict=True):
            if marked == meta.REFUSED:  # no hash: a new attempt, or one that moved to a file
                moved = await self.hashes.restore(*key)
                await self.hashes.write(*key, _marks(ranks))
            else:  # an archive path, or the hash gone since the marks (moved meanwhile)
                moved = any(found[: len(ranks)]) or None in found[len(ranks) :]
            if moved:
                after_archive.append(key)
        return counts, after_archive

    async def _store_late(self, late: list[Write]) -> None:
        """Store at the end of their streams, marked, lines refused but not stored before."""
        if not late:
            return
        pipe = self.client.pipeline(transaction=False)
        for write in late:
            run_id, attempt, rank = write.where
            log.error(
                "ingest.out_of_order",
                run=run_id,
                attempt=attempt,
                rank=rank,
                position=write.id.decode(),
                hint="two collectors copied lines at once",
            )
            fields = dict(write.fields)
            marker = b"late:" + write.id
            fields[b"m"] = marker + b"," + fields[b"m"] if b"m" in fields else marker
            pipe.xadd(write.stream, fields)  # type: ignore[arg-type]
        await pipe.execute()


def _marks(ranks: list[int]) -> list[meta.Op]:
    return [("incr", formats.lines_field(rank), 0) for rank in ranks]


def _chunks(writes: list[Write]) -> list[list[Write]]:
    """The writes by stream, in order, in chunks of at most about ``_CHUNK_BYTES`` of lines."""
    chunks: dict[str, list[Write]] = {}
    sizes: dict[str, int] = {}
    full: list[list[Write]] = []
    for write in writes:
        size = sizes.get(write.stream, 0)
        if size >= _CHUNK_BYTES:
            full.append(chunks.pop(write.stream))
            size = 0
        chunks.setdefault(write.stream, []).append(write)
        sizes[write.stream] = size + len(write.fields[b"l"])
    return full + list(chunks.values())


def _script_args(chunk: list[Write]) -> list[bytes]:
    args: list[bytes] = []
    for write in chunk:
        fields = write.fields
        args += (write.id, fields[b"s"], fields[b"l"], fields.get(b"m", b""))
    return args


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile."""
    await wait_event(stop, seconds)
