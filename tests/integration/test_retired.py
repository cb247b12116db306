"""Retired histories on a real server: the server keeps a count per bucket of them, never a
record per run; the archive's index says where each is. A former version's records are read
as before and moved to the index; a restore or a new stream that a retirement in its bucket
overtook looks again."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis

from events import keys
from events.model import run_aggregate
from services.core.archive import Archive
from services.core.archiver import archive_log
from services.core.client import connect
from services.core.retired import INDEX, Retired, RetiredIndex
from services.core.settings import Settings
from services.core.store import _CHECKED, APPEND_FUNCTION, RESTORE_FUNCTION, Append, EventStore
from tests import factories as f
from tests.integration.test_archive import EVERYTHING, a_log, histories, runs_of, whole_log

RETIRED = keys.retired(0)


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


async def fields(redis: aioredis.Redis) -> dict[str, str]:
    found = cast(dict[bytes, bytes], await redis.hgetall(RETIRED))
    return {field.decode(): value.decode() for field, value in found.items()}


async def test_a_former_versions_records_are_read_as_before_then_moved_to_the_index(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await a_log(store, seed=7, steps=300, runs=6)
    before = await whole_log(store)
    theirs = await histories(store, before)
    done = await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)
    assert done.retired > 2
    index = RetiredIndex(tmp_path)
    records = {run: index.find(run) for run in runs_of(before)}
    kept = {run: record for run, record in records.items() if record is not None}
    # What a former version left: a field per retired stream, no counts, no index.
    shutil.rmtree(tmp_path / INDEX)
    await redis.delete(RETIRED)
    for run, record in kept.items():
        await redis.hset(RETIRED, keys.aggregate_stream(run, 0), record.encode())

    assert await histories(store, before) == theirs
    run, mine = next((run, theirs[run]) for run in kept)
    appended = await store.append(
        [f.updated(run.removeprefix("run:"), 2)], expected_version=len(mine)
    )
    assert appended.version == len(mine) + 1  # restored from the field, then appended to
    assert keys.aggregate_stream(run, 0) not in await fields(redis)

    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)
    left = await fields(redis)
    assert left, "counts"
    assert all(field.startswith("#") for field in left), "a field per run left"
    index = RetiredIndex(tmp_path)
    assert {r: index.find(r) for r in kept if r != run} == {r: kept[r] for r in kept if r != run}
    after = await histories(store, before)
    assert {a: h for a, h in after.items() if a != run} == {
        a: h for a, h in theirs.items() if a != run
    }
    assert after[run][:-1] == mine


async def retired_bucket_run(store: EventStore, redis: aioredis.Redis, root: Path) -> str:
    """A new run id whose bucket counts a retirement already."""
    await a_log(store, seed=5, steps=300, runs=8)
    assert (await archive_log(redis, Archive(root), cutoff_ms=EVERYTHING)).retired > 0
    counted = set(await fields(redis))
    while True:
        run_id = uuid.uuid4().hex
        if keys.retirement_bucket(keys.aggregate_stream(run_aggregate(run_id), 0)) in counted:
            return run_id


async def test_an_event_for_a_run_with_no_history_lands_once_the_index_says_so(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    run_id = await retired_bucket_run(store, redis, tmp_path)
    appended = await store.append([f.updated(run_id, 1)], expected_version=None)
    assert appended.version == 1
    assert [r.version for r in await store.history(run_aggregate(run_id))] == [1]


async def test_a_retirement_in_the_bucket_sends_a_restore_or_a_new_stream_to_look_again(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    run_id = await retired_bucket_run(store, redis, tmp_path)
    stream = keys.aggregate_stream(run_aggregate(run_id), 0)
    bucket = keys.retirement_bucket(stream)
    count = (await fields(redis))[bucket]
    stale = str(int(count) - 1)

    # A new stream: the writer looked past an older count, so it looks again.
    request = store._request(Append([f.updated(run_id, 1)], expected_version=None))
    args = [*request.args]
    args[_CHECKED] = stale
    reply = await redis.fcall(APPEND_FUNCTION, len(request.keys), *request.keys, *args)
    assert reply == [b"absent", count.encode()]
    assert not await redis.exists(stream)
    args[_CHECKED] = count
    reply = await redis.fcall(APPEND_FUNCTION, len(request.keys), *request.keys, *args)
    assert reply[0] == b"ok"

    # A restore read before a retirement of its bucket writes nothing.
    retired = next(
        run for run in runs_of(await whole_log(store)) if RetiredIndex(tmp_path).find(run)
    )
    gone = keys.aggregate_stream(retired, 0)
    now = (await fields(redis))[keys.retirement_bucket(gone)]
    entry = [b"1-1", 2, b"k", b"x"]
    for former, seen, done in (("", str(int(now) - 1), 0), ("1 0", now, 0), ("", now, 1)):
        restored = await redis.fcall(
            RESTORE_FUNCTION, 2, gone, RETIRED, former, keys.retirement_bucket(gone), seen, *entry
        )
        assert restored == done
        assert await redis.xlen(gone) == done


def test_a_record_keeps_its_version_and_segments() -> None:
    assert Retired.decode(Retired(7, (1, 4)).encode()) == Retired(7, (1, 4))
