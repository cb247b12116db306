"""The log-collector process copying the ingest stream: same ids, exactly once through kill -9
and redelivery, huge and binary lines capped and marked, one collector at a time."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis

from events import keys
from services.core.groups import ensure_group
from services.output import ingest, reading
from services.output.reading import INGEST_GROUP
from tests import raw
from tests.integration.log_collector import helpers as h
from tests.waiting import eventually

RUN = "hello-abcdef"


async def test_lines_land_in_per_rank_streams_with_their_ingest_ids(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    async with h.collector(redis_url, redis, tmp_path / "archive"):
        sent: dict[int, list[str]] = {}
        for rank in range(3):
            texts = [b"rank %d step %d" % (rank, i) for i in range(100)]
            sent[rank] = await h.send(redis, h.lines(RUN, 0, rank, texts))
        for rank in range(3):
            await eventually(partial(h.stream_len, redis, RUN, 0, rank), equals=100, what="stored")
        await eventually(lambda: h.pending(redis), equals=0, what="every line acknowledged")

    for rank in range(3):
        assert await h.stored_ids(redis, RUN, 0, rank) == sent[rank]
        stored = await reading.read_lines(redis, None, RUN, 0, rank)
        assert [line.text for line in stored] == [f"rank {rank} step {i}" for i in range(100)]
        assert {line.source for line in stored} == {"stdout"}
        assert [line.time_ms for line in stored] == [int(i.split("-")[0]) for i in sent[rank]]
    assert await reading.ranks(redis, RUN, 0) == [0, 1, 2]
    meta = await redis.hgetall(keys.attempt_logs(RUN, 0))
    assert {meta[f"lines:{rank}".encode()] for rank in range(3)} == {b"100"}


async def test_kill_9_mid_flood_then_restart_stores_every_line_exactly_once(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    total, ranks = 50_000, 4
    sent: dict[int, list[str]] = {rank: [] for rank in range(ranks)}

    async def flood() -> None:
        for start in range(0, total, 1000):
            batch = [(i % ranks, b"step %d loss 0.%d" % (i, i)) for i in range(start, start + 1000)]
            ids = await h.send(
                redis, [ingest.ingest_fields(RUN, 0, k, ingest.STDOUT, t) for k, t in batch]
            )
            for (rank, _), position in zip(batch, ids, strict=True):
                sent[rank].append(position)

    async def stored() -> int:
        return sum([await h.stream_len(redis, RUN, 0, rank) for rank in range(ranks)])

    async def stored_at_least(count: int) -> bool:
        return await stored() >= count

    first = h.CollectorProcess(redis_url, tmp_path / "archive", "c1", tmp_path / "c1.log")
    await first.start()
    await first.wait_active(redis)
    flooding = asyncio.create_task(flood())
    try:
        await eventually(
            lambda: stored_at_least(10_000), what="the collector under way", interval=0.002
        )
        await first.kill()
        killed_at = await stored()
        await flooding
    finally:
        await first.stop()
    assert killed_at < total, "the collector was killed mid-flood"

    async with h.collector(redis_url, redis, tmp_path / "archive", "c1"):
        await eventually(stored, equals=total, what="every line stored after the restart")
        await eventually(lambda: h.pending(redis), equals=0, what="every line acknowledged")
    for rank in range(ranks):
        assert await h.stored_ids(redis, RUN, 0, rank) == sent[rank]  # same ids, once, in order


async def test_a_batch_redelivered_after_a_crash_is_stored_once(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A collector read 100 lines, stored 60 and died before acknowledging: the next one (under
    another name) takes the pending lines over and stores only the 40 missing, in order."""
    ids = await h.send(redis, h.lines(RUN, 0, 0, [b"line %d" % i for i in range(100)]))
    await ensure_group(redis, keys.log_ingest(), INGEST_GROUP)
    taken = await redis.xreadgroup(INGEST_GROUP, "dead", {keys.log_ingest(): ">"}, count=100)
    entries = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], taken)[0][1]
    for position, fields in entries[:60]:
        await redis.xadd(
            keys.rank_log(RUN, 0, 0), {b"s": fields[b"s"], b"l": fields[b"l"]}, id=position
        )

    async with h.collector(redis_url, redis, tmp_path / "archive", "c2") as collector:
        await eventually(lambda: h.pending(redis), equals=0, what="the dead one's lines taken over")
        await h.append(redis_url, h.completed(RUN))
        await eventually(lambda: h.archived(redis, RUN, 0, [0]), what="the attempt archived")
        assert collector.alive

    lines = await reading.read_lines(redis, tmp_path / "archive", RUN, 0, 0)
    assert [line.id for line in lines] == ids
    assert [line.text for line in lines] == [f"line {i}" for i in range(100)]
    meta = keys.attempt_logs(RUN, 0)
    assert await redis.hget(meta, "lines:0") == b"100"  # exact once archived


async def test_huge_and_binary_lines_are_capped_and_marked_and_the_collector_goes_on(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    megabyte = b"x" * (1 << 20)
    binary = b"\xff\xfe\x00 weights \x80\x81 \xe2\x82"
    async with h.collector(redis_url, redis, tmp_path / "archive") as collector:
        await h.send(
            redis,
            [
                {b"r": RUN.encode(), b"a": b"0", b"k": b"0", b"s": b"o", b"l": megabyte},  # raw
                ingest.ingest_fields(RUN, 0, 0, ingest.STDERR, megabyte),  # cut by the agent
                ingest.ingest_fields(RUN, 0, 0, ingest.STDOUT, binary),
                ingest.dropped_fields(RUN, 0, 0, 12_345),
                {b"r": RUN.encode(), b"a": b"0", b"l": b"no rank"},  # not a line
                ingest.ingest_fields(RUN, 0, 0, ingest.STDOUT, b"still going"),
            ],
        )
        await eventually(lambda: h.stream_len(redis, RUN, 0, 0), equals=5, what="5 lines stored")
        await eventually(lambda: h.pending(redis), equals=0, what="all acknowledged")
        assert collector.alive

    lines = await reading.read_lines(redis, None, RUN, 0, 0)
    cut = (1 << 20) - ingest.MAX_LINE
    assert [len(line.text) for line in lines[:2]] == [ingest.MAX_LINE, ingest.MAX_LINE]
    assert [line.marker for line in lines[:2]] == [f"… [line truncated: {cut} bytes cut]"] * 2
    assert lines[1].source == "stderr"
    assert lines[2].text == binary.decode(errors="replace")
    assert lines[2].marker is None
    assert lines[3].marker == "[12345 lines dropped]"
    assert "12345 lines of output were dropped" in lines[3].text
    assert lines[4].render() == "still going"
    stored = await raw.xrange(redis, keys.rank_log(RUN, 0, 0))
    assert stored[2][1][b"l"] == binary  # the bytes as they came
    letters = await raw.xrange(redis, keys.dead_letter_stream(INGEST_GROUP))
    assert len(letters) == 1
    assert b"field b'k' missing" in letters[0][1][b"error"]


async def test_a_standby_collector_takes_over_when_the_active_one_stops(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    async with h.collector(redis_url, redis, archive, "c1") as active:
        standby = await h.CollectorProcess(redis_url, archive, "c2", tmp_path / "c2.log").start()
        try:
            await h.send(redis, h.lines(RUN, 0, 0, [b"before"]))
            await eventually(lambda: h.stream_len(redis, RUN, 0, 0), equals=1, what="stored")
            assert await redis.get(keys.log_collector_lease()) == b"c1"
            assert await active.stop() == 0  # SIGTERM: clean exit, lease released
            await standby.wait_active(redis)
            await h.send(redis, h.lines(RUN, 0, 0, [b"after"]))
            await eventually(lambda: h.stream_len(redis, RUN, 0, 0), equals=2, what="stored")
        finally:
            await standby.stop()
    assert [line.text for line in await reading.read_lines(redis, None, RUN, 0, 0)] == [
        "before",
        "after",
    ]
