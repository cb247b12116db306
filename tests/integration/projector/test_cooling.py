"""The rows of archived runs leave Valkey for Parquet, on a real server: every reader reads
what it read before; the projection keys shrink; a cooler killed between its segment and its
delete loses nothing; an archived run that moves again comes back whole and its rows end as a
rebuild's; the projector does it as its ACL user, refused nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from events import keys
from events.codec import Recorded
from events.model import RunDeleted, RunEvent
from projections import cold, query
from projections.billing import DIMENSIONS, GroupBy
from projections.catalog import NAMES, make
from projections.runner import Runner
from projections.storage import RedisStore
from services.api.runs import RunRequests
from services.core import acl
from services.core.archive import Archive, ArchivedLog
from services.core.archiver import archive_log
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.projector import cooling
from services.projector.app import build_projector
from services.projector.cooling import Cooler
from services.projector.lanes import rebuild_many
from services.projector.settings import ProjectorSettings
from tests import factories as f
from tests.acl_users import refused, server_ms
from tests.integration.projector.test_projector_process import append_all, simulated_events

EVERYTHING = 2**62  # a cut-off after every entry
GROUPS: tuple[GroupBy, ...] = (*DIMENSIONS, "attempt")


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


async def projected(redis: aioredis.Redis) -> Runner:
    """The projector's runner, caught up over archive + stream: every run at rest let go."""
    runner = Runner(RedisStore(redis), ArchivedLog(redis), [make(n) for n in NAMES])
    await runner.start()
    return runner


async def read_everything(redis: aioredis.Redis, records: list[Recorded]) -> dict[str, Any]:
    """What every reader of ``projections.query`` gives, for every run, user and listing."""
    runs = sorted({r.event.run_id for r in records if isinstance(r.event, RunEvent)})
    rows = [await query.get_run(redis, run) for run in runs]
    names = [row.name for row in rows if row is not None]
    users = sorted({row.created_by for row in rows if row is not None})
    listings: dict[str, Any] = {}
    asking: dict[str, dict[str, Any]] = {
        "all": {},
        "deleted": {"include_deleted": True},
        "user": {"user": users[0]},
        "names": {"names": ["*-1*"]},
    }
    for label, asked in asking.items():
        pages, cursor = [], None
        while True:
            page = await query.list_runs(redis, limit=3, cursor=cursor, **asked)
            pages.append(page)
            if (cursor := page.next_cursor) is None:
                break
        listings[label] = pages
    found: dict[str, Any] = query.to_builtins(
        {
            "by_uid": rows,
            "by_name": [await query.get_run(redis, name) for name in names],
            "attempts": [await query.attempts(redis, run) for run in runs],
            "attempts_of": await query.attempts_of(redis, runs),
            "listings": listings,
            "billing": [await query.billing_report(redis, g, now=1) for g in GROUPS],
            "totals": [await query.billing_totals(redis, d) for d in DIMENSIONS],
            "audit_runs": [await query.audit(redis, run=run) for run in runs],
            "audit_users": [await query.audit(redis, user=user) for user in users],
            "utilization": await query.utilization(redis),
        }
    )
    return found


async def projection_bytes(redis: aioredis.Redis) -> int:
    used = 0
    async for key in redis.scan_iter(match=f"{keys.projection_keys()}*"):
        used += cast(int, await redis.memory_usage(key))
    return used


async def cool_all(redis: aioredis.Redis, runner: Runner) -> int:
    cooler = Cooler(redis, RedisStore(redis), 1, runs=4)
    moved = 0
    for _ in range(100):  # a pass looks at 4 runs; round the index until none moves
        step = await cooler.step(runner)
        moved += step
        if step == 0 and cooler._after is None:
            break
    return moved


async def test_archived_runs_leave_valkey_and_read_as_before(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await append_all(store, simulated_events(seed=5, steps=600, runs=12))
    records = [record async for record in store.replay()]
    runner = await projected(redis)
    before = await read_everything(redis, records)
    used = await projection_bytes(redis)
    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)

    moved = await cool_all(redis, runner)

    assert moved > 0
    assert await read_everything(redis, records) == before
    assert await projection_bytes(redis) < used
    # What stays is the runs still at work (their histories not retired), and no more.
    statuses = cast(bytes, await redis.get(keys.projection_active("run_status"))).decode()
    warm = cast(list[bytes], await redis.hkeys(keys.projection_rows("run_status", statuses, "run")))
    runs = {r.event.run_id for r in records if isinstance(r.event, RunEvent)}
    assert {w.decode() for w in warm} == {
        run for run in runs if await redis.exists(keys.aggregate_stream(f"run:{run}", 0))
    }
    assert len(warm) + moved == len(runs)
    root = tmp_path / cooling.ROWS
    listed = cold.manifest(root).segments
    assert listed
    assert sum(s.runs for s in listed) == moved
    assert cast(bytes, await redis.get(keys.cold_rows())).decode() == str(root.resolve())


async def test_a_cooler_killed_before_its_delete_loses_nothing_and_goes_on(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await append_all(store, simulated_events(seed=6, steps=400, runs=8))
    records = [record async for record in store.replay()]
    runner = await projected(redis)
    before = await read_everything(redis, records)
    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)
    root = tmp_path / cooling.ROWS
    root.mkdir()
    (root / ".00000009-dead.parquet.tmp").write_bytes(b"half")  # a crash mid-write

    class Killed(Exception):
        pass

    async def killed(_: object) -> int:
        raise Killed

    store_ = RedisStore(redis)
    monkeypatch.setattr(store_, "cool", killed)
    with pytest.raises(Killed):  # the segment is listed, nothing left Valkey
        await Cooler(redis, store_, 1).step(runner)
    assert cold.manifest(root).segments
    assert await read_everything(redis, records) == before

    assert await cool_all(redis, runner) > 0  # the next pass copies them again, then deletes
    assert await read_everything(redis, records) == before
    assert not list(root.glob(".*.tmp"))


async def test_an_archived_run_that_moves_again_comes_back_whole(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    settings = Settings(redis_url=str(store.settings.redis_url))
    await append_all(store, simulated_events(seed=5, steps=600, runs=12))
    runner = await projected(redis)
    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)
    assert await cool_all(redis, runner) > 0
    statuses = cast(bytes, await redis.get(keys.projection_active("run_status"))).decode()
    warm_rows = keys.projection_rows("run_status", statuses, "run")
    warm = set(await redis.hkeys(warm_rows))
    records = [record async for record in store.replay()]
    deleted = {r.event.run_id for r in records if isinstance(r.event, RunDeleted)}
    run_id = next(
        r.event.run_id
        for r in records
        if isinstance(r.event, RunEvent)
        and r.event.run_id.encode() not in warm
        and r.event.run_id not in deleted
    )
    history = await store.history(f"run:{run_id}")
    await store.append([f.updated(run_id, 4)], expected_version=len(history))
    await runner.process(await ArchivedLog(redis).read(records[-1].position, 100))

    assert runner.warmed == len(NAMES)  # every fold took it back from the cold rows
    assert await redis.hexists(warm_rows, run_id)  # and its rows are in Valkey again
    row = await query.get_run(redis, run_id)
    assert row is not None
    assert row.max_retries == 4
    records = [record async for record in store.replay()]
    mixed = await read_everything(redis, records)
    await rebuild_many(settings, NAMES, now_ms=2, lanes=1)  # every run in Valkey, from zero
    assert await read_everything(redis, records) == mixed


async def test_the_projector_cools_as_its_acl_user_and_is_refused_nothing(
    store: EventStore,
    redis: aioredis.Redis,
    redis_url: str,
    projector_user: aioredis.Redis,
    tmp_path: Path,
) -> None:
    since = server_ms(redis_url)
    await append_all(store, simulated_events(seed=9, steps=600, runs=12))
    records = [record async for record in store.replay()]
    settings = ProjectorSettings(redis_url=redis_url, projector_rest_s=0, projector_cool_runs=5)
    projector = build_projector(settings, projector_user)
    await projector.start()
    before = await read_everything(redis, records)
    names = await reserved(redis, records)
    assert await projector.cool() == 0  # nothing archived yet: nothing leaves
    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)

    moved = 0
    for _ in range(100):
        moved += await projector.cool()
        if cold.manifest(tmp_path / cooling.ROWS).segments and not await projector.cool():
            break

    assert moved > 0
    assert await read_everything(redis, records) == before
    assert any([await redis.get(keys.run_name(name)) is None for name in names])
    assert refused(redis_url, acl.PROJECTOR, since) == []


async def reserved(redis: aioredis.Redis, records: list[Recorded]) -> dict[str, str]:
    """Every run's name reserved, as the API's submit does: name -> run id."""
    runs = sorted({r.event.run_id for r in records if isinstance(r.event, RunEvent)})
    names = {row.name: row.run_uid for run in runs if (row := await query.get_run(redis, run))}
    for name, run in names.items():
        await redis.set(keys.run_name(name), run)
    return names


async def test_a_cooled_runs_name_is_read_from_the_cold_rows_and_stays_taken(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    await append_all(store, simulated_events(seed=8, steps=400, runs=8))
    records = [record async for record in store.replay()]
    runner = await projected(redis)
    names = await reserved(redis, records)
    kept = next(iter(names))
    await redis.set(keys.run_name(kept), "another-run")  # reserved since for another run
    await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING)

    assert await cool_all(redis, runner) > 0

    requests = RunRequests(store)
    cooled = [name for name in names if not await redis.exists(keys.run_name(name))]
    assert cooled, "no reservation went"
    for name in cooled:
        assert await query.run_named(redis, name) == names[name]
        assert await requests.resolve(name) == names[name]
        assert not await requests._reserve(name, "a-new-run")  # still taken
        assert not await redis.exists(keys.run_name(name))
    assert await redis.get(keys.run_name(kept)) == b"another-run"
    assert await requests._reserve("hello-zzzzzz", "a-new-run")  # a free name is had
