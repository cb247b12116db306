"""Finished attempts archived to files and read the same as before; follow across the archive;
archives served over Redis to a reader without the files; the first failed rank."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import redis.asyncio as aioredis

from events import keys
from events.codec import Recorded
from events.model import Reason
from services.log_collector.events import EventHandler
from services.output import formats, ingest, reading
from services.output.formats import LogLine
from tests.integration.log_collector import helpers as h
from tests.waiting import eventually

RUN = "train-qwerty"


async def _mixed_output(client: aioredis.Redis, ranks: int, count: int) -> None:
    """``count`` lines per rank, with stderr, a cut line, binary bytes and a dropped marker."""
    for rank in range(ranks):
        entries = h.lines(RUN, 0, rank, [b"rank %d line %d" % (rank, i) for i in range(count)])
        entries[3] = ingest.ingest_fields(RUN, 0, rank, ingest.STDERR, b"warning: \xff\xfe")
        entries[5] = ingest.ingest_fields(RUN, 0, rank, ingest.STDOUT, b"y" * 100_000)
        entries[7] = ingest.dropped_fields(RUN, 0, rank, 42)
        await h.send(client, entries)


async def test_a_finished_attempt_is_archived_and_reads_the_same(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    async with h.collector(redis_url, redis, archive):
        await _mixed_output(redis, ranks=2, count=2500)
        for rank in (0, 1):
            await eventually(partial(h.stream_len, redis, RUN, 0, rank), equals=2500, what="stored")
        live = [await reading.read_lines(redis, archive, RUN, 0, rank) for rank in (0, 1)]
        live_tail = await reading.read_lines(redis, archive, RUN, 0, 1, tail=10)

        await h.append(redis_url, h.exited(RUN, 0, 0, exit_code=0), h.completed(RUN))
        await eventually(lambda: h.archived(redis, RUN, 0, [0, 1]), what="both ranks archived")

    for rank in (0, 1):
        assert (archive / RUN / "0" / f"rank-{rank}.log").is_file()
        assert await reading.read_lines(redis, archive, RUN, 0, rank) == live[rank]
    assert await reading.read_lines(redis, archive, RUN, 0, 1, tail=10) == live_tail
    assert live_tail == live[1][-10:]
    meta = await redis.hgetall(keys.attempt_logs(RUN, 0))
    assert meta[b"lines:0"] == meta[b"lines:1"] == b"2500"
    assert meta[b"archive:1"] == f"{RUN}/0/rank-1.log".encode()
    assert [line.marker for line in live[0][5:8:2]] == [
        f"… [line truncated: {100_000 - ingest.MAX_LINE} bytes cut]",
        "[42 lines dropped]",
    ]
    assert live[0][3] == LogLine(
        live[0][3].time_ms, "stderr", "warning: \ufffd\ufffd", None, live[0][3].id
    )


async def follow_lines(
    redis: aioredis.Redis,
    archive: Path,
    *,
    is_finished: Callable[[], Awaitable[bool]],
    after: str | None = None,
    block_ms: int = 1000,
) -> AsyncIterator[LogLine]:
    """Rank 0's lines after ``after``, then each new one, as a follow (the API's) reads them."""
    async for batch in reading.follow_records(
        redis, archive, RUN, 0, 0, is_finished=is_finished, after=after, block_ms=block_ms
    ):
        for record in batch:
            yield record.to_line()


async def test_follow_sees_every_line_once_while_live_and_across_the_archive(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    finished = False
    gate = asyncio.Event()

    async def is_finished() -> bool:
        return finished

    async def follow(seen: list[LogLine], hold_after: int | None) -> None:
        async for line in follow_lines(redis, archive, is_finished=is_finished, block_ms=50):
            seen.append(line)
            if len(seen) == hold_after:
                await gate.wait()  # this reader falls behind until the attempt is archived

    async with h.collector(redis_url, redis, archive):
        await h.send(redis, h.lines(RUN, 0, 0, [b"first %d" % i for i in range(200)]))
        behind: list[LogLine] = []
        along: list[LogLine] = []
        readers = [
            asyncio.create_task(follow(behind, hold_after=200)),
            asyncio.create_task(follow(along, hold_after=None)),
        ]
        await eventually(lambda: len(behind) == 200 and len(along) == 200, what="live lines")
        await h.send(redis, h.lines(RUN, 0, 0, [b"then %d" % i for i in range(300)]))
        await h.append(redis_url, h.exited(RUN, 0, 0, exit_code=0), h.completed(RUN))
        finished = True
        await eventually(lambda: h.archived(redis, RUN, 0, [0]), what="rank 0 archived")
        gate.set()
        await eventually(lambda: all(reader.done() for reader in readers), what="follows end")
        for reader in readers:
            reader.result()

    expected = [f"first {i}" for i in range(200)] + [f"then {i}" for i in range(300)]
    for seen in (behind, along):
        assert [line.text for line in seen] == expected
        assert [line.id for line in seen] == sorted({line.id for line in seen}, key=formats.id_key)


async def test_a_reader_without_the_files_gets_archived_lines_from_the_collector(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"

    async def is_finished() -> bool:
        return True

    async with h.collector(redis_url, redis, archive):
        await _mixed_output(redis, ranks=1, count=3000)
        await h.append(redis_url, h.completed(RUN))
        await eventually(lambda: h.archived(redis, RUN, 0, [0]), what="archived")
        local = await reading.read_lines(redis, archive, RUN, 0, 0)
        assert len(local) == 3000
        assert await reading.read_lines(redis, elsewhere, RUN, 0, 0) == local
        assert await reading.read_lines(redis, None, RUN, 0, 0, tail=7) == local[-7:]
        followed = [
            line
            async for line in follow_lines(
                redis, elsewhere, is_finished=is_finished, after=local[-3].id
            )
        ]
        assert followed == local[-2:]


async def test_a_line_that_comes_after_the_archive_is_archived_too(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    async with h.collector(redis_url, redis, archive):
        await h.send(redis, h.lines(RUN, 0, 0, [b"in time"]))
        await h.append(redis_url, h.completed(RUN))
        await eventually(lambda: h.archived(redis, RUN, 0, [0]), what="archived")
        await h.send(redis, h.lines(RUN, 0, 0, [b"too late"]))  # an agent breaking the protocol

        async def texts() -> list[str]:
            return [line.text for line in await reading.read_lines(redis, archive, RUN, 0, 0)]

        await eventually(texts, equals=["in time", "too late"], what="both lines readable")
        await eventually(lambda: h.archived(redis, RUN, 0, [0]), what="archived again")
    lines = await reading.read_lines(redis, archive, RUN, 0, 0)
    assert [line.text for line in lines] == ["in time", "too late"]
    assert (archive / RUN / "0" / "rank-0.log").read_bytes().count(b"\n") == 2


async def test_the_first_failed_rank_is_the_first_failure_in_the_log(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    stopped = Reason(category="stopped", code="Stopped")
    async with h.collector(redis_url, redis, tmp_path / "archive"):
        await h.append(
            redis_url,
            # attempt 0: rank 1 exits 1, then rank 0 is stopped by SIGTERM
            h.exited(RUN, 0, 1, exit_code=1),
            h.exited(RUN, 0, 0, exit_code=None, signal=15),
            h.failed(RUN, 0),
            # attempt 1: rank 0 stopped (not a failure of its own), then rank 1 exits 2
            h.exited(RUN, 1, 0, exit_code=143, reason=stopped),
            h.exited(RUN, 1, 1, exit_code=2),
            h.failed(RUN, 1, exit_code=2),
            # attempt 2: everything exits 0
            h.exited(RUN, 2, 0, exit_code=0),
            h.exited(RUN, 2, 1, exit_code=0),
            h.completed(RUN, 2),
        )
        await eventually(
            lambda: redis.hexists(keys.attempt_logs(RUN, 2), formats.TERMINAL_AT),
            what="every event handled",
        )
    assert await reading.first_failed_rank(redis, RUN, 0) == 1
    assert await reading.first_failed_rank(redis, RUN, 1) == 1
    assert await reading.first_failed_rank(redis, RUN, 2) is None


async def test_a_redelivered_earlier_failure_still_wins(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    """Handled out of log order (a retried entry): the earlier position is kept."""
    handler = EventHandler(redis, tmp_path)
    early, late = h.exited(RUN, 0, 3, exit_code=1), h.exited(RUN, 0, 5, exit_code=1)
    await handler(Recorded("1700000000000-5", 1, late))
    await handler(Recorded("1700000000000-2", 2, early))
    await handler(Recorded("1700000000000-5", 1, late))
    assert await reading.first_failed_rank(redis, RUN, 0) == 3
