"""Reading run output, live or archived: what ``mcli logs`` and the SDK show.

Where the lines of one rank of one attempt are:
- while the attempt runs, in the stream ``keys.rank_log(run, attempt, rank)``, written by the
  log-collector: one entry per line whose id is the line's ingest id (its time on the server's
  clock), with the fields ``s``, ``l`` and ``m`` of ``services.output.ingest``;
- once the attempt is archived, in ``<archive_dir>/<run>/<attempt>/rank-<k>.log`` (the path
  relative to the archive dir is recorded in the attempt's meta, field ``archive:<k>``), one
  JSON record per line (``formats.Record``); the stream is deleted after the file is safely on disk;
- a line stored after that (an agent that broke the protocol) is in the stream again until it
  is archived too: a reader reads the file, then the stream after the file's last id;
- a reader without the file asks a log-collector for it over Redis (``keys.log_requests()``):
  the request carries an id, the reply comes in chunks on ``keys.log_reply(id)``.

Where the attempt's meta is (the fields ``lines:<k>``, ``archive:<k>``, ``terminal_at``,
``first_failed_rank``, ``first_failed_at``): in the attempt hash ``keys.attempt_logs(run,
attempt)`` while it exists; once every rank is archived and the event archive holds the
attempt's terminal event, the log-collector moves it to ``<archive_dir>/<run>/<attempt>/
meta.json`` (one JSON object, the same fields and values) and deletes the hash
(``services.log_collector.meta``). ``attempt_meta`` reads it from wherever it is, and every
reader here goes through it.

Invariants: lines come in id order and each once. A reader that has seen up to id X goes on
after X wherever the lines are by then (stream or file), so an archive in the middle of a read
or a follow neither repeats nor skips a line. Bytes are kept as they came; text is decoded UTF-8
with replacement only for display. The client must return bytes (``decode_responses=False``).

The attempt's meta is the hash while the hash exists, else the file: the file is written
before the hash is deleted and the hash is read first (one HGETALL: all of it or nothing), so a
reader that finds no hash finds the file. A hash that exists is whole: the log-collector never
writes a hash that has gone to a file without first bringing it back from the file. A readable
``archive_dir`` is trusted (no file there: no meta); a reader without one asks a log-collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from events import keys
from services.core.errors import TemporaryStoreError
from services.output.formats import (
    FIRST_FAILED_RANK,
    TERMINAL_AT,
    LogLine,
    Meta,
    Record,
    archive_field,
    archive_records,
    id_key,
    meta_path,
    ranks_of,
    read_meta_file,
    record_of,
)

INGEST_GROUP = "log-collector"  # the consumer group of the ingest stream
_PAGE = 1000


class LogsUnavailable(TemporaryStoreError):
    """The archived lines are neither readable here nor served by a log-collector."""


Entry = tuple[bytes, dict[bytes, bytes]]


async def xrange(
    client: aioredis.Redis, stream: str, start: str = "-", end: str = "+", count: int | None = None
) -> list[Entry]:
    """XRANGE, typed for a client that returns bytes."""
    return cast(list[Entry], await client.xrange(stream, min=start, max=end, count=count))


async def hget(client: aioredis.Redis, key: str, field: str) -> bytes | None:
    return cast(bytes | None, await client.hget(key, field))


# --- serving archives over Redis ---------------------------------------------------------------


class ArchiveRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    run: str
    attempt: int
    rank: int  # 0 when ``meta``: a collector that predates it serves rank 0's lines
    tail: int | None = None
    after_id: str | None = None
    meta: bool = False  # the attempt's meta.json rather than a rank's lines


class Chunk(msgspec.Struct, kw_only=True, omit_defaults=True):
    lines: list[Record] = []
    done: bool = False
    error: str | None = None
    meta: Meta | None = None  # the reply to a ``meta`` request: {} when there is no file


encode_msg = msgspec.msgpack.Encoder().encode
decode_request = msgspec.msgpack.Decoder(ArchiveRequest).decode
decode_chunk = msgspec.msgpack.Decoder(Chunk).decode


async def remote_records(
    client: aioredis.Redis, request: ArchiveRequest, *, timeout_s: float = 10.0
) -> AsyncIterator[Record]:
    """Ask a log-collector for archived records; ``LogsUnavailable`` if none can answer."""
    async for chunk in _replies(client, request, timeout_s):
        for record in chunk.lines:
            yield record


async def remote_meta(
    client: aioredis.Redis, run_id: str, attempt: int, *, timeout_s: float = 10.0
) -> Meta:
    """Ask a log-collector for the attempt's meta.json ({} if it has none)."""
    request = ArchiveRequest(id=uuid.uuid4().hex, run=run_id, attempt=attempt, rank=0, meta=True)
    async with contextlib.aclosing(_replies(client, request, timeout_s)) as replies:
        async for chunk in replies:
            if chunk.meta is not None:
                return chunk.meta
    raise LogsUnavailable(
        f"the log-collector that answered does not serve meta.json ({run_id} attempt {attempt}):"
        " upgrade it"
    )


async def _replies(
    client: aioredis.Redis, request: ArchiveRequest, timeout_s: float
) -> AsyncGenerator[Chunk]:
    reply = keys.log_reply(request.id)
    await client.rpush(keys.log_requests(), encode_msg(request))
    try:
        while True:
            popped = cast(
                tuple[bytes, bytes] | None, await client.blpop([reply], timeout=timeout_s)
            )
            if popped is None:
                what = "meta" if request.meta else f"rank {request.rank}"
                raise LogsUnavailable(
                    f"no log-collector answered within {timeout_s:g}s for the archived output of"
                    f" {request.run} attempt {request.attempt} ({what})"
                )
            chunk = decode_chunk(popped[1])
            if chunk.error is not None:
                raise LogsUnavailable(chunk.error)
            yield chunk
            if chunk.done:
                return
    finally:
        await client.delete(reply)


async def attempt_meta(
    client: aioredis.Redis, archive_dir: Path | None, run_id: str, attempt: int
) -> Meta:
    """The attempt's meta from wherever it is: the hash, else meta.json (here if
    ``archive_dir`` is readable, else from a log-collector); {} if neither exists."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.attempt_logs(run_id, attempt))
    pipe.exists(keys.log_meta_moved())
    stored, moved_any = cast(tuple[dict[bytes, bytes], int], await pipe.execute())
    if stored:
        return {field.decode(): value.decode() for field, value in stored.items()}
    if not moved_any:
        return {}  # no hash ever moved (the flag is set before the first goes): none yet
    # No hash: the attempt has none yet, or it moved to the file (written before the delete).
    if archive_dir is not None and await asyncio.to_thread(archive_dir.is_dir):
        moved = await asyncio.to_thread(read_meta_file, archive_dir / meta_path(run_id, attempt))
        return moved or {}
    return await remote_meta(client, run_id, attempt)


class _RankLog:
    """Where one rank's lines are: its stream, its archive (local or served), its hash."""

    def __init__(
        self, client: aioredis.Redis, archive_dir: Path | None, run_id: str, attempt: int, rank: int
    ) -> None:
        self.client = client
        self.archive_dir = archive_dir
        self.run_id, self.attempt, self.rank = run_id, attempt, rank
        self.stream = keys.rank_log(run_id, attempt, rank)

    async def archived(self) -> str | None:
        """The archive file relative to the archive dir, once the rank is archived."""
        meta = await attempt_meta(self.client, self.archive_dir, self.run_id, self.attempt)
        return meta.get(archive_field(self.rank))

    async def from_archive(
        self, relative: str, after: str | None, tail: int | None = None
    ) -> AsyncIterator[Record]:
        local = self.archive_dir / relative if self.archive_dir is not None else None
        if local is not None and local.is_file():
            for record in archive_records(local, after=after, tail=tail):
                yield record
            return
        request = ArchiveRequest(
            id=uuid.uuid4().hex,
            run=self.run_id,
            attempt=self.attempt,
            rank=self.rank,
            tail=tail,
            after_id=after,
        )
        async for record in remote_records(self.client, request):
            yield record

    async def from_stream(self, after: str | None, tail: int | None = None) -> list[Record]:
        if tail is not None:
            newest = cast(list[Entry], await self.client.xrevrange(self.stream, count=max(tail, 1)))
            records = [record_of(i, f) for i, f in reversed(newest)]
            return [r for r in records if after is None or id_key(r.id) > id_key(after)]
        records = []
        start = "-" if after is None else f"({after}"
        while True:
            page = await xrange(self.client, self.stream, start, count=_PAGE)
            records += [record_of(i, f) for i, f in page]
            if len(page) < _PAGE:
                return records
            start = f"({records[-1].id}"

    async def read_new(self, after: str, block_ms: int | None) -> list[Record]:
        reply = await self.client.xread({self.stream: after}, count=_PAGE, block=block_ms)
        entries = cast(list[list[Any]], reply)[0][1] if reply else []
        return [record_of(i, f) for i, f in entries]


def _last(records: list[Record]) -> str | None:
    return records[-1].id if records else None


# --- reading ---------------------------------------------------------------------------------


async def read_lines(
    client: aioredis.Redis,
    archive_dir: Path | None,
    run_id: str,
    attempt: int,
    rank: int,
    *,
    tail: int | None = None,
) -> list[LogLine]:
    """Every line of the rank so far (or its last ``tail``), archived or live, in order."""
    return [
        r.to_line()
        for r in await read_records(client, archive_dir, run_id, attempt, rank, tail=tail)
    ]


async def read_records(
    client: aioredis.Redis,
    archive_dir: Path | None,
    run_id: str,
    attempt: int,
    rank: int,
    *,
    tail: int | None = None,
) -> list[Record]:
    """``read_lines`` as stored: the bytes as they came."""
    return await _read(_RankLog(client, archive_dir, run_id, attempt, rank), tail)


async def _read(log: _RankLog, tail: int | None) -> list[Record]:
    records: list[Record] = []
    relative = await log.archived()
    if relative is not None:
        records += [r async for r in log.from_archive(relative, None, tail)]
    records += await log.from_stream(_last(records), tail)  # live lines (or late ones)
    if relative is None and (relative := await log.archived()) is not None:
        # Archived while we read the stream: the file holds what we had not read yet.
        records += [r async for r in log.from_archive(relative, _last(records), tail)]
    if tail is not None:
        return records[-tail:] if tail > 0 else []
    return records


async def follow_records(
    client: aioredis.Redis,
    archive_dir: Path | None,
    run_id: str,
    attempt: int,
    rank: int,
    *,
    is_finished: Callable[[], Awaitable[bool]],
    after: str | None = None,
    block_ms: int = 1000,
) -> AsyncIterator[list[Record]]:
    """The rank's records after id ``after`` (all of them if None), then the new ones as they
    come, in batches (each what one read found: a reader may flush at the end of one).

    Ends once ``is_finished()`` says the attempt is terminal and the log-collector has stored
    every line ingested before that, or once the rank is archived (after the rest of the file).
    """
    log = _RankLog(client, archive_dir, run_id, attempt, rank)
    last = after
    final = False
    while True:
        relative = await log.archived()
        if relative is not None:
            batch: list[Record] = []
            async for record in log.from_archive(relative, last):
                batch.append(record)
                last = record.id
                if len(batch) == _PAGE:
                    yield batch
                    batch = []
            late = await log.from_stream(last)  # late lines, not archived yet
            if batch or late:
                yield batch + late
            return
        records = await log.read_new(last or "0-0", None if final else block_ms)
        if records:
            yield records
            last = records[-1].id
            continue
        if final:
            return
        final = await is_finished() and await stored_through_terminal(
            client, run_id, attempt, archive_dir
        )


# --- what the log-collector knows ---------------------------------------------------------


async def first_failed_rank(
    client: aioredis.Redis, run_id: str, attempt: int, archive_dir: Path | None = None
) -> int | None:
    value = (await attempt_meta(client, archive_dir, run_id, attempt)).get(FIRST_FAILED_RANK)
    return None if value is None else int(value)


async def ranks(
    client: aioredis.Redis, run_id: str, attempt: int, archive_dir: Path | None = None
) -> list[int]:
    """The ranks that wrote output in the attempt."""
    return ranks_of(await attempt_meta(client, archive_dir, run_id, attempt))


async def ingest_caught_up(client: aioredis.Redis, position: str) -> bool:
    """True once every ingest entry up to ``position`` was stored and acknowledged."""
    stream = keys.log_ingest()
    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError:  # no ingest stream yet
        return False
    group = next((g for g in groups if g["name"] == INGEST_GROUP.encode()), None)
    if group is None:
        return False
    if group["pending"]:
        summary = await client.xpending(stream, INGEST_GROUP)
        if summary["min"] is not None and id_key(summary["min"].decode()) <= id_key(position):
            return False
    delivered = group["last-delivered-id"].decode()
    if id_key(delivered) >= id_key(position):
        return True
    return not await xrange(client, stream, f"({delivered}", position, count=1)


async def stored_through_terminal(
    client: aioredis.Redis, run_id: str, attempt: int, archive_dir: Path | None = None
) -> bool:
    """True once the attempt's terminal event was seen and every line before it stored."""
    terminal = (await attempt_meta(client, archive_dir, run_id, attempt)).get(TERMINAL_AT)
    return terminal is not None and await ingest_caught_up(client, terminal)
