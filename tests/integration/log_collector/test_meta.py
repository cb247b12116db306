"""An archived attempt's hash leaves Valkey for ``meta.json`` once the event archive holds its
terminal event: nothing of the run stays under ``rp:logs:``, every reader reads the same, here
or through a log-collector; a late line brings it back and is archived again; a move cut short
is finished; an attempt whose terminal event is not archived keeps its hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from events import keys
from events.model import run_aggregate
from services.core import archive as event_archive
from services.log_collector import meta
from services.log_collector.settings import LogCollectorSettings
from services.output import formats, reading
from tests.integration.log_collector import helpers as h
from tests.waiting import eventually

RUN = "train-asdfgh"


async def _finished(redis: aioredis.Redis, url: str, lines: int = 300) -> str:
    """Two ranks' output, rank 1 failing first, the attempt failed and archived; the position
    of its terminal event."""
    for rank in (0, 1):
        await h.send(
            redis, h.lines(RUN, 0, rank, [b"rank %d line %d" % (rank, i) for i in range(lines)])
        )
    *_, terminal = await h.append(
        url, h.exited(RUN, 0, 1, exit_code=1), h.exited(RUN, 0, 0, exit_code=0), h.failed(RUN)
    )
    await eventually(lambda: h.archived(redis, RUN, 0, [0, 1]), what="both ranks archived")
    return terminal


async def _archive_events_upto(redis: aioredis.Redis, position: str, partition: int = 0) -> None:
    """What the event archiver does once it holds the log up to ``position``."""
    await event_archive.set_pointer(
        redis, partition, event_archive.Pointer("/event-archive", position)
    )


async def _hash_gone(redis: aioredis.Redis) -> bool:
    return not await redis.exists(keys.attempt_logs(RUN, 0))


async def _run_keys(redis: aioredis.Redis) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"{keys.output_keys()}{RUN}*")]


async def _what_readers_see(redis: aioredis.Redis, archive: Path | None) -> dict[str, Any]:
    return {
        "lines": [await reading.read_lines(redis, archive, RUN, 0, rank) for rank in (0, 1)],
        "tail": await reading.read_lines(redis, archive, RUN, 0, 1, tail=5),
        "first_failed_rank": await reading.first_failed_rank(redis, RUN, 0, archive),
        "ranks": await reading.ranks(redis, RUN, 0, archive),
        "stored": await reading.stored_through_terminal(redis, RUN, 0, archive),
    }


async def test_a_moved_attempt_leaves_nothing_in_valkey_and_reads_the_same(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    async with h.collector(redis_url, redis, archive):
        terminal = await _finished(redis, redis_url)
        before = await _what_readers_see(redis, archive)
        stored = await reading.attempt_meta(redis, archive, RUN, 0)
        await _archive_events_upto(redis, terminal)
        await eventually(lambda: _hash_gone(redis), what="the hash moved")

        assert await _run_keys(redis) == []
        assert await redis.zcard(keys.log_meta_queue()) == 0
        assert await _what_readers_see(redis, archive) == before
    assert before["first_failed_rank"] == 1
    assert before["ranks"] == [0, 1]
    assert [len(lines) for lines in before["lines"]] == [300, 300]
    moved = formats.read_meta_file(archive / RUN / "0" / "meta.json")
    assert moved == stored
    assert set(stored) == {
        "lines:0",
        "lines:1",
        "archive:0",
        "archive:1",
        "terminal_at",
        "first_failed_rank",
        "first_failed_at",
    }


async def test_a_reader_without_the_archive_reads_the_meta_through_a_collector(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    async with h.collector(redis_url, redis, archive):
        terminal = await _finished(redis, redis_url)
        before = await _what_readers_see(redis, archive)
        await _archive_events_upto(redis, terminal)
        await eventually(lambda: _hash_gone(redis), what="the hash moved")

        assert await _what_readers_see(redis, tmp_path / "elsewhere") == before
        assert await _what_readers_see(redis, None) == before
        assert await reading.first_failed_rank(redis, RUN, 0) == 1
        assert await reading.attempt_meta(redis, None, RUN, 7) == {}  # no such attempt


async def test_a_late_line_after_the_move_is_archived_in_order(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    async with h.collector(redis_url, redis, archive):
        terminal = await _finished(redis, redis_url, lines=3)
        await _archive_events_upto(redis, terminal)
        await eventually(lambda: _hash_gone(redis), what="the hash moved")
        # An agent breaking the protocol: one more line of rank 0, and a rank never seen.
        late = [*h.lines(RUN, 0, 0, [b"too late"]), *h.lines(RUN, 0, 2, [b"new"])]
        *_, last = await h.send(redis, late)
        await eventually(lambda: reading.ingest_caught_up(redis, last), what="late lines stored")

        async def texts(rank: int) -> list[str]:
            return [line.text for line in await reading.read_lines(redis, archive, RUN, 0, rank)]

        # Read at once, whether the hash is back yet or not: never part of it.
        expected = [f"rank 0 line {i}" for i in range(3)] + ["too late"]
        assert await texts(0) == expected
        assert await texts(2) == ["new"]
        await eventually(lambda: h.archived(redis, RUN, 0, [0, 1, 2]), what="archived again")
        await eventually(lambda: _hash_gone(redis), what="the hash moved again")
        assert await _run_keys(redis) == []
        assert await texts(0) == expected
        assert await reading.ranks(redis, RUN, 0, archive) == [0, 1, 2]
        assert await reading.first_failed_rank(redis, RUN, 0, archive) == 1
    moved = formats.read_meta_file(archive / RUN / "0" / "meta.json")
    assert moved is not None
    assert (moved["lines:0"], moved["lines:2"]) == ("4", "1")
    assert (archive / RUN / "0" / "rank-0.log").read_bytes().count(b"\n") == 4


async def test_a_move_cut_short_after_the_file_is_finished_by_the_next_pass(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    async with h.collector(redis_url, redis, archive):
        terminal = await _finished(redis, redis_url)
    before = await _what_readers_see(redis, archive)
    # The mover wrote the file and died before the delete.
    stored = await reading.attempt_meta(redis, archive, RUN, 0)
    meta.write_file(archive / formats.meta_path(RUN, 0), stored)
    assert await _what_readers_see(redis, archive) == before

    await _archive_events_upto(redis, terminal)
    mover = meta.Mover(redis, LogCollectorSettings(archive_dir=archive))
    assert await mover.move_ready() == 1
    assert await _run_keys(redis) == []
    assert await redis.zcard(keys.log_meta_queue()) == 0
    assert await _what_readers_see(redis, archive) == before


async def test_an_attempt_whose_terminal_event_is_not_archived_keeps_its_hash(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    async with h.collector(redis_url, redis, archive):
        terminal = await _finished(redis, redis_url)
    before = await _what_readers_see(redis, archive)
    partitions = 4
    ours = keys.partition_of(run_aggregate(RUN), partitions)
    other = (ours + 1) % partitions
    mover = meta.Mover(redis, LogCollectorSettings(archive_dir=archive, partitions=partitions))

    assert await mover.move_ready() == 0  # no event archive at all
    await _archive_events_upto(
        redis, event_archive.show(event_archive.before(event_archive.parse(terminal))), ours
    )
    await _archive_events_upto(redis, "99999999999999-0", other)  # another partition's log
    assert await mover.move_ready() == 0
    assert not await _hash_gone(redis)
    assert await redis.zcard(keys.log_meta_queue()) == 1
    assert not (archive / formats.meta_path(RUN, 0)).exists()

    await _archive_events_upto(redis, terminal, ours)
    assert await mover.move_ready() == 1
    assert await _hash_gone(redis)
    assert await _what_readers_see(redis, archive) == before


async def test_until_a_hash_has_moved_a_reader_asks_no_collector_for_a_missing_one(
    redis: aioredis.Redis,
) -> None:
    # No log-collector runs here: a reader that asked one would wait and give up.
    assert await reading.attempt_meta(redis, None, "new-run", 0) == {}
