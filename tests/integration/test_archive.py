"""The global log's archive on a real server: after archiving, every reader sees the log it saw
before; a rebuild equals the incremental rows; an archiver killed -9 at any step and run again
loses nothing and duplicates nothing; a second pass is harmless; consumer groups and
projections hold the archive back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pyarrow.parquet as pq
import pytest
import redis.asyncio as aioredis

from events import keys
from events.codec import Recorded
from events.model import ATTEMPT_ENDS, RunDeleted, RunEvent
from projections import query
from projections.catalog import NAMES, make
from projections.runner import Runner
from projections.storage import RedisStore
from services.core.archive import (
    LOCK,
    MANIFEST,
    MERGE_WRITTEN,
    MERGED,
    Archive,
    ArchiveBusy,
    ArchivedLog,
    ArchiveMissing,
    Pointer,
    day_of,
    log_dataset,
    parse,
    partition_root,
    pointer,
    set_pointer,
)
from services.core.archiver import (
    INDEXED,
    LISTED,
    POINTED,
    TRIMMED,
    WRITTEN,
    ArchiveMoved,
    archive_log,
    archive_partitions,
    retire_runs,
)
from services.core.client import connect
from services.core.errors import VersionConflict
from services.core.retired import RetiredIndex
from services.core.settings import Settings
from services.core.store import EventStore
from services.projector.lanes import rebuild_many
from tests import factories as f
from tests.integration.projector.test_projector_process import append_all, dump, simulated_events

LOG = keys.log_stream(0)
EVERYTHING = 2**62  # a cut-off after every entry


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


async def a_log(store: EventStore, *, seed: int = 5, steps: int = 600, runs: int = 12) -> None:
    await append_all(store, simulated_events(seed=seed, steps=steps, runs=runs))


async def whole_log(store: EventStore) -> list[Recorded]:
    return [record async for record in store.replay()]


async def paged(store: EventStore, count: int) -> list[str]:
    """Every position of the log, read ``count`` at a time (``read_log_entries``, as the API's
    users fold reads it)."""
    found: list[str] = []
    after = "0"
    while True:
        page = await store.read_log_entries(after=after, count=count)
        found += [position.decode() for position, _ in page]
        if len(page) < count:
            return found
        after = found[-1]


async def histories(store: EventStore, records: list[Recorded]) -> dict[str, list[Recorded]]:
    aggregates = sorted({r.event.aggregate for r in records})
    return {a: await store.history(a) for a in aggregates}


async def middle_ms(records: list[Recorded]) -> int:
    """A cut-off that leaves about half the log live (entries from that millisecond on)."""
    return parse(records[len(records) // 2].position)[0]


def archived_positions(root: Path) -> list[str]:
    found: list[str] = []
    for segment in Archive(root).manifest().segments:
        found += pq.read_table(root / segment.path, columns=["position"])["position"].to_pylist()
    return found


def files(root: Path) -> list[str]:
    """Every file of an archive but its manifest (a crash's leftovers included)."""
    found = [p for p in root.rglob("*") if p.is_file() and p.name not in {MANIFEST, LOCK}]
    return sorted(str(p.relative_to(root)) for p in found)


def listed(root: Path) -> list[str]:
    """The files an archive's manifests list: its segments and its index's files."""
    archive = Archive(root)
    return [s.path for s in archive.manifest().segments] + [
        f.path for f in archive.index.manifest().files
    ]


async def assert_whole(
    store: EventStore, redis: aioredis.Redis, root: Path, before: list[Recorded]
) -> None:
    """The log reads as ``before``; each entry is in the archive or the stream, never both."""
    assert await whole_log(store) == before
    assert await paged(store, 7) == [r.position for r in before]
    archived = archived_positions(root)
    live = [p.decode() for p, _ in cast(list[tuple[bytes, object]], await redis.xrange(LOG))]
    assert archived + live == [r.position for r in before]


def runs_of(records: list[Recorded]) -> dict[str, list[Recorded]]:
    found: dict[str, list[Recorded]] = {}
    for record in records:
        if record.event.aggregate.startswith("run:"):
            found.setdefault(record.event.aggregate, []).append(record)
    return found


async def retired_as_due(redis: aioredis.Redis, root: Path, before: list[Recorded]) -> int:
    """Each run at rest that the archive holds all of has no stream left, its version kept in
    the archive's index of retired histories; every other run keeps its whole stream. The
    server keeps nothing per run: its retirements are counts, one per bucket. How many went."""
    archived = set(archived_positions(root))
    index = RetiredIndex(root)
    gone = 0
    for aggregate, mine in runs_of(before).items():
        stream = keys.aggregate_stream(aggregate, 0)
        at_rest = type(mine[-1].event) in ATTEMPT_ENDS | {RunDeleted}
        if at_rest and all(r.position in archived for r in mine):
            assert not await redis.exists(stream), aggregate
            kept = index.find(aggregate)
            assert kept is not None, aggregate
            assert kept.version == mine[-1].version
            gone += 1
        else:
            assert await redis.xlen(stream) == len(mine), aggregate
    counts = cast(dict[bytes, bytes], await redis.hgetall(keys.retired(0)))
    assert all(field.startswith(b"#") for field in counts), "a field per run"
    assert sum(int(n) for n in counts.values()) >= gone
    return gone


async def test_after_archiving_every_reader_reads_what_it_read_before(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store)
    before = await whole_log(store)
    their_histories = await histories(store, before)
    await rebuild_many(Settings(redis_url=_url(store)), NAMES, now_ms=1, lanes=1)
    audit = await query.audit(redis, limit=100_000)

    done = await archive_log(
        redis, Archive(tmp_path), cutoff_ms=await middle_ms(before), segment_events=50
    )

    assert 0 < done.events < len(before)
    assert done.trimmed == done.events
    assert done.segments >= -(-done.events // 50)  # ceiling: at most 50 events a segment
    assert done.runs > 0
    assert await redis.xlen(LOG) == len(before) - done.events
    await assert_whole(store, redis, tmp_path, before)
    assert done.retired == await retired_as_due(redis, tmp_path, before) > 0
    assert await histories(store, before) == their_histories
    assert await query.audit(redis, limit=100_000, log=ArchivedLog(redis)) == audit
    found = await pointer(redis)
    assert found is not None
    assert found.last == done.upto
    assert found.dir == str(tmp_path.resolve())  # noqa: ASYNC240 - no IO: tmp_path is absolute


async def test_a_rebuild_after_archiving_ends_with_the_incremental_rows(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    settings = Settings(redis_url=_url(store))
    events = simulated_events(seed=8, steps=900, runs=15)
    await append_all(store, events[:600])
    await rebuild_many(settings, NAMES, now_ms=1, lanes=1)  # the projector's rows, caught up
    done = await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING, segment_events=100)
    assert done.events > 0
    assert await redis.xlen(LOG) == 0
    await append_all(store, events[600:])
    # The projector after a restart: its active builds, caught up over archive + stream.
    runner = Runner(RedisStore(redis), ArchivedLog(redis), [make(n) for n in NAMES])
    await runner.start()
    fresh = await rebuild_many(settings, NAMES, now_ms=2, switch=False, lanes=2)
    for name in NAMES:
        active = cast(bytes, await redis.get(keys.projection_active(name))).decode()
        rows = await dump(redis, name, active)
        assert rows, f"{name} is empty"
        assert rows == await dump(redis, name, fresh[name]), f"{name} differs from its rebuild"


@pytest.mark.parametrize(
    "crash",
    [
        *((WRITTEN, 1), (WRITTEN, 3), (LISTED, 1), (LISTED, 4)),
        *((POINTED, 1), (TRIMMED, 1), (INDEXED, 1)),
        *((MERGE_WRITTEN, 1), (MERGE_WRITTEN, 2), (MERGED, 1), (MERGED, 3)),
    ],
    ids=lambda crash: f"{crash[0]}-{crash[1]}",
)
async def test_an_archiver_killed_at_any_step_loses_and_doubles_nothing(
    store: EventStore, redis: aioredis.Redis, redis_url: str, tmp_path: Path, crash: tuple[str, int]
) -> None:
    step, nth = crash
    await a_log(store, seed=9, steps=500, runs=10)
    before = await whole_log(store)
    cutoff = await middle_ms(before)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.archive_proc",
        redis_url,
        str(tmp_path),
        str(cutoff),
        "40",
        step,
        str(nth),
    )
    assert await asyncio.wait_for(process.wait(), timeout=120) == -9
    # Mid-way, what is listed may still be in the stream too: readers see each entry once.
    assert await whole_log(store) == before
    assert await paged(store, 7) == [r.position for r in before]

    again = await archive_log(redis, Archive(tmp_path), cutoff_ms=cutoff, segment_events=40)
    await assert_whole(store, redis, tmp_path, before)
    archived = archived_positions(tmp_path)
    assert archived == [r.position for r in before if parse(r.position)[0] < cutoff]
    assert await redis.xlen(LOG) == len(before) - len(archived)
    assert set(listed(tmp_path)) <= set(files(tmp_path))  # the merged two: deleted next pass
    assert again.upto == archived[-1]
    assert await retired_as_due(redis, tmp_path, before) > 0

    third = await archive_log(redis, Archive(tmp_path), cutoff_ms=cutoff, segment_events=40)
    assert (third.events, third.segments, third.trimmed, third.retired) == (0, 0, 0, 0)
    assert third.merged == 0
    await assert_whole(store, redis, tmp_path, before)
    assert files(tmp_path) == sorted(listed(tmp_path))


async def test_consumer_groups_and_projections_hold_the_archive_back(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=2, steps=200, runs=5)
    before = await whole_log(store)
    await redis.xgroup_create(LOG, "slow", id="0")
    taken = cast(list[Any], await redis.xreadgroup("slow", "c1", {LOG: ">"}, count=30))
    delivered = [position.decode() for position, _ in taken[0][1]]
    await redis.xack(LOG, "slow", *delivered[:10])  # the 11th is still pending

    done = await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)
    assert done.upto == delivered[9]
    assert done.held_by == "consumer group slow"
    await assert_whole(store, redis, tmp_path, before)

    await redis.xack(LOG, "slow", *delivered[10:])
    await redis.set(keys.projection_active("billing"), "v1")
    await redis.set(keys.projection_checkpoint("billing", "v1"), before[20].position)
    done = await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)
    assert done.upto == before[20].position
    assert done.held_by == "projection billing"
    await assert_whole(store, redis, tmp_path, before)


async def test_leftovers_of_a_crash_are_removed_and_another_directory_is_refused(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=3, steps=100, runs=3)
    before = await whole_log(store)
    stray = tmp_path / "day=2020-01-01" / ".1-0_2-0.parquet.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a file")
    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)
    assert not stray.exists()
    await assert_whole(store, redis, tmp_path, before)
    with pytest.raises(ArchiveMoved, match="archived in"):
        await archive_log(redis, Archive(tmp_path / "elsewhere"), cutoff_ms=EVERYTHING)


def _url(store: EventStore) -> str:
    return store.settings.redis_url


def mcli_admin(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``mcli admin ARGS`` as an operator on this host runs it: no RUNPLANE_ setting of the
    tests' own, a home and a state directory of its own, then ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "admin", *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("RUNPLANE_")}
        | {"HOME": str(tmp_path), "RUNPLANE_HOME": str(tmp_path / "state")}
        | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mcli_archive(
    tmp_path: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return mcli_admin(tmp_path, "archive", *args, env=env)


async def test_the_operator_archives_with_mcli_admin_archive(
    store: EventStore, redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    await a_log(store, seed=6, steps=150, runs=4)
    before = await whole_log(store)
    runs = len({r.event.aggregate for r in before if r.event.aggregate.startswith("run:")})
    root = tmp_path / "archive"
    operator = {"RUNPLANE_REDIS_URL": redis_url, "RUNPLANE_EVENT_ARCHIVE": str(root)}

    first = await asyncio.to_thread(mcli_archive, tmp_path, "--before", "0.001s", env=operator)
    assert first.returncode == 0, first.stderr
    assert first.stdout == (
        f"archived {len(before)} events of {runs} runs; trimmed {len(before)} entries from the "
        f"log (up to {before[-1].position}); {await retired_as_due(redis, root, before)} runs "
        "at rest now read from the archive\n"
    )
    await assert_whole(store, redis, root, before)
    again = await asyncio.to_thread(mcli_archive, tmp_path, "--before", "1s", env=operator)
    assert (again.returncode, again.stdout) == (0, "archived 0 events of 0 runs\n")

    nowhere = await asyncio.to_thread(
        mcli_archive, tmp_path, "--before", "1d", env={"RUNPLANE_REDIS_URL": redis_url}
    )
    assert nowhere.returncode == 1
    assert "Set RUNPLANE_EVENT_ARCHIVE" in nowhere.stderr


async def test_an_archived_runs_next_events_continue_its_history(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=7, steps=150, runs=3)
    before = await whole_log(store)
    run = next(r.event for r in before if isinstance(r.event, RunEvent))
    history = await store.history(run.aggregate)
    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)
    assert await redis.xlen(LOG) == 0

    appended = await store.append([f.updated(run.run_id, 3)], expected_version=len(history))

    assert appended.version == len(history) + 1
    after = await store.history(run.aggregate)
    assert after[:-1] == history
    assert after[-1].version == len(history) + 1
    assert [r.position for r in await whole_log(store)] == [
        *(r.position for r in before),
        *appended.positions,
    ]


async def test_a_run_at_rest_leaves_the_server_and_goes_on_from_its_archived_version(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=7, steps=300, runs=4)
    before = await whole_log(store)
    used = await redis.memory_usage(keys.aggregate_stream(next(iter(runs_of(before))), 0))
    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING, segment_events=20)
    assert await retired_as_due(redis, tmp_path, before) == len(runs_of(before))
    aggregate, mine = next(iter(runs_of(before).items()))
    stream = keys.aggregate_stream(aggregate, 0)
    kept = RetiredIndex(tmp_path).find(aggregate)
    assert kept is not None
    assert len(kept.segments) > 1  # 20 events a segment: the run's are in several
    kept_bytes = await redis.memory_usage(keys.retired(0))
    assert kept_bytes is not None
    assert used is not None
    assert kept_bytes < used  # every run's count, less than one run's stream
    run_id = aggregate.removeprefix("run:")

    with pytest.raises(VersionConflict):  # a writer that takes it for a new run
        await store.append([f.updated(run_id, 1)], expected_version=0)
    updated = await store.append([f.updated(run_id, 2)], expected_version=len(mine))
    assert updated.version == len(mine) + 1
    # Restored first: the stream whole again, entry for entry.
    assert await redis.xlen(stream) == len(mine) + 1
    deleted = RunDeleted(id=f.new_id(), actor="alice@example.com", run_id=run_id)
    await store.append([deleted], expected_version=len(mine) + 1)
    later = await store.history(aggregate)
    assert later[:-2] == mine
    assert [r.version for r in later[-2:]] == [len(mine) + 1, len(mine) + 2]

    # Its second life archived: its stream goes again, its segments named together.
    again = await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING, segment_events=20)
    assert again.retired == 1
    assert not await redis.exists(stream)
    both = RetiredIndex(tmp_path).find(aggregate)
    assert both is not None
    assert both.version == len(mine) + 2
    assert set(kept.segments) < set(both.segments)
    assert await store.history(aggregate) == later


async def test_a_run_appended_to_meanwhile_keeps_its_stream(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=3, steps=200, runs=3)
    before = await whole_log(store)
    archive = Archive(tmp_path)
    archive.add(archive.write(await ArchivedLog(redis).read("0", 100_000)))
    upto = parse(before[-1].position)
    await set_pointer(redis, 0, Pointer(str(tmp_path), before[-1].position))
    (aggregate, mine), *others = runs_of(before).items()
    # What the archiver read is no longer the stream's end once the run is appended to.
    update = f.updated(aggregate.removeprefix("run:"), 2)
    await store.append([update], expected_version=len(mine))

    assert await retire_runs(redis, archive, 0, [aggregate], upto) == 0
    assert await retire_runs(redis, archive, 0, [a for a, _ in others], upto) == len(others)

    assert await redis.xlen(keys.aggregate_stream(aggregate, 0)) == len(mine) + 1
    assert [r.event.id for r in await store.history(aggregate)] == [
        *(r.event.id for r in mine),
        update.id,
    ]
    for other, theirs in others:
        assert not await redis.exists(keys.aggregate_stream(other, 0))
        assert await store.history(other) == theirs


async def test_entries_that_are_no_events_are_archived_as_they_were(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=4, steps=40, runs=2)
    await redis.xadd(LOG, {"x": "not an event"})
    await redis.xadd(LOG, {"k": "no.such@1", "e": b"\xff{", "n": "7"})
    await a_log(store, seed=5, steps=40, runs=2)
    log = ArchivedLog(redis, root=tmp_path)
    before = await log.read("0", 100_000)

    done = await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING, segment_events=9)

    assert done.events == len(before)
    assert await ArchivedLog(redis).read("0", 100_000) == before
    assert [e for page in await pages(log, 5) for e in page] == before


async def pages(log: ArchivedLog, count: int) -> list[list[tuple[str, list[bytes]]]]:
    found: list[list[tuple[str, list[bytes]]]] = []
    after = "0"
    while True:
        found.append(await log.read(after, count))
        if len(found[-1]) < count:
            return found
        after = found[-1][-1][0]


async def test_a_reader_that_cannot_read_the_archive_reads_nothing(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=4, steps=40, runs=2)
    await archive_log(redis, Archive(tmp_path / "here"), cutoff_ms=EVERYTHING)
    await asyncio.to_thread((tmp_path / "here").rename, tmp_path / "gone")
    with pytest.raises(ArchiveMissing, match="mount the archive at that path"):
        await whole_log(store)


async def test_one_archiver_at_a_time(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=4, steps=40, runs=2)
    with Archive(tmp_path).locked(), pytest.raises(ArchiveBusy, match="another archiver"):
        await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)
    assert (await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)).events > 0


async def test_reports_read_the_listed_segments_as_one_dataset_by_day(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=4, steps=60, runs=2)
    before = await whole_log(store)
    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING, segment_events=10)
    (tmp_path / "day=2020-01-01").mkdir()
    stray = tmp_path / "day=2020-01-01" / "1-0_2-0.parquet"  # a crash's, not listed
    await asyncio.to_thread(stray.write_bytes, (tmp_path / MANIFEST).read_bytes())

    table = Archive(tmp_path).dataset().to_table()

    assert table["position"].to_pylist() == [r.position for r in before]
    assert set(table["day"].to_pylist()) == {day_of(parse(r.position)) for r in before}
    assert table["aggregate"].to_pylist() == [r.event.aggregate for r in before]


async def test_every_partition_is_archived_to_its_own_archive_and_read_back_whole(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    partitions = 3
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url, partitions=partitions))
    try:
        await a_log(store)
        before = [[r async for r in store.replay(p)] for p in range(partitions)]
        assert all(before), "every partition has events"
        done = await archive_partitions(
            redis, tmp_path, cutoff_ms=EVERYTHING, partitions=partitions
        )
        assert done.events == sum(map(len, before))
        assert done.trimmed == done.events
        table = log_dataset(tmp_path, partitions).to_table()  # reports read every partition's
        assert sorted(table["position"].to_pylist()) == sorted(
            r.position for records in before for r in records
        )
        for p in range(partitions):
            assert await redis.xlen(keys.log_stream(p)) == 0
            found = await pointer(redis, p)
            assert found is not None
            assert found.dir == str(partition_root(tmp_path, p).resolve())
            assert [r.position async for r in store.replay(p)] == [r.position for r in before[p]]
        fresh = EventStore(connect(redis_url), Settings(redis_url=redis_url, partitions=partitions))
        try:  # a new reader (its own archive readers) reads each partition whole
            assert [[r async for r in fresh.replay(p)] for p in range(partitions)] == before
        finally:
            await fresh.close()
        again = await archive_partitions(
            redis, tmp_path, cutoff_ms=EVERYTHING, partitions=partitions
        )
        assert (again.events, again.trimmed) == (0, 0)  # a second pass is harmless
    finally:
        await store.close()


async def test_the_nodes_inboxes_keep_only_their_copies_newer_than_the_cut_off(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=7, steps=300, runs=4)
    before = await whole_log(store)
    inboxes = [key async for key in redis.scan_iter(match=keys.inbox(keys.ANY, 0))]
    assert inboxes, "the runs were placed on nodes"
    held = sum([await redis.xlen(inbox) for inbox in inboxes])
    cutoff = await middle_ms(before)

    done = await archive_log(redis, Archive(tmp_path), cutoff_ms=cutoff)

    left = [
        cast(bytes, p).decode() for inbox in inboxes for p, _ in await redis.xrange(inbox) or []
    ]
    assert all(parse(p)[0] >= cutoff for p in left)
    assert 0 < done.inbox_entries == held - len(left)
    assert left, "the newer copies stay"


async def test_a_writer_that_cannot_read_the_archive_writes_nothing_to_a_retired_run(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    # A node that does not mount the archive: the run's stream cannot be restored there.
    await a_log(store, seed=7, steps=150, runs=2)
    before = await whole_log(store)
    await archive_log(redis, Archive(tmp_path / "here"), cutoff_ms=EVERYTHING)
    aggregate, _ = next(iter(runs_of(before).items()))
    await asyncio.to_thread((tmp_path / "here").rename, tmp_path / "gone")

    with pytest.raises(ArchiveMissing, match="mount the archive at that path"):
        await store.append([f.updated(aggregate.removeprefix("run:"), 2)], expected_version=None)

    assert not await redis.exists(keys.aggregate_stream(aggregate, 0))
    assert RetiredIndex(tmp_path / "gone").find(aggregate) is not None
