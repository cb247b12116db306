"""``rebuild_many`` over processes builds exactly what one process builds, on a real server."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bench.projections import fill
from events import keys
from projections.catalog import NAMES, make
from projections.lanes import LaneFailed, drop_unfinished
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.projector.lanes import rebuild_many
from tests.integration.projector.test_projector_process import append_all, dump, simulated_events
from tests.waiting import eventually


async def a_log(url: str, *, seed: int, steps: int, runs: int) -> None:
    """Append a simulated history of ``runs`` runs to the log at ``url``."""
    store = EventStore(connect(url), Settings(redis_url=url))
    try:
        await append_all(store, simulated_events(seed=seed, steps=steps, runs=runs))
    finally:
        await store.close()


async def test_lanes_build_the_rows_one_process_builds(
    redis: aioredis.Redis, redis_url: str
) -> None:
    await a_log(redis_url, seed=3, steps=1500, runs=25)
    alone = await rebuild_many(
        Settings(redis_url=redis_url), NAMES, now_ms=1, switch=False, lanes=1
    )
    spread = await rebuild_many(Settings(redis_url=redis_url), NAMES, now_ms=2, lanes=2)
    for name in NAMES:
        assert spread[name] != alone[name]
        rows = await dump(redis, name, spread[name])
        assert rows, f"{name} is empty"
        assert rows == await dump(redis, name, alone[name]), f"{name} differs"
        assert await redis.get(keys.projection_active(name)) == spread[name].encode()


async def test_a_lane_that_fails_is_named_with_its_error(redis_url: str) -> None:
    nowhere = redis_url.rsplit("/", 1)[0] + "/999"  # no such database: every lane fails
    with pytest.raises(LaneFailed, match=r"rebuilding attempts, run_status failed: .*DB index"):
        await rebuild_many(Settings(redis_url=nowhere), NAMES, now_ms=1, lanes=2)


async def test_what_a_failed_rebuild_left_is_dropped_but_never_what_readers_read(
    redis: aioredis.Redis, redis_url: str
) -> None:
    await a_log(redis_url, seed=4, steps=400, runs=8)
    unfinished = await rebuild_many(
        Settings(redis_url=redis_url), ["attempts"], now_ms=5, switch=False, lanes=1
    )
    read = await rebuild_many(Settings(redis_url=redis_url), ["billing"], now_ms=5, lanes=1)
    assert await dump(redis, "attempts", unfinished["attempts"])
    await drop_unfinished(redis, ["attempts", "billing"], now_ms=5)
    assert await dump(redis, "attempts", unfinished["attempts"]) == {}
    assert await dump(redis, "billing", read["billing"]), "readers' build was dropped"


async def test_a_lane_killed_mid_rebuild_leaves_readers_on_their_builds(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """kill -9 of a lane's process: the rebuild fails naming it, what it had stored is dropped,
    its projections' readers stay where they were; the other lane's builds are switched to."""
    await fill(redis, 220_000)  # commits at 100k and 200k, then its last one switches
    rebuilding = asyncio.create_task(
        rebuild_many(Settings(redis_url=redis_url), NAMES, now_ms=9, lanes=2)
    )
    lane = await eventually(lambda: _lane_pid(redis_url), what="the lane's process")
    await eventually(
        lambda: redis.exists(keys.projection_checkpoint("audit", f"v{make('audit').version}r9")),
        equals=1,
        what="the lane stored its first batch (of three)",
    )
    os.kill(lane, signal.SIGKILL)
    with pytest.raises(LaneFailed, match="rebuilding audit, billing, utilization failed"):
        await rebuilding
    for name in ("audit", "billing", "utilization"):
        assert await redis.get(keys.projection_active(name)) is None
        assert await dump(redis, name, f"v{make(name).version}r9") == {}
    for name in ("attempts", "run_status"):
        assert await redis.get(keys.projection_active(name)) == f"v{make(name).version}r9".encode()


def _lane_pid(url: str) -> int | None:
    """The process of the lane rebuilding on ``url`` (found by its command line, and the server
    its environment names)."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"services.projector.lanes" in argv and b"RUNPLANE_REDIS_URL=" + url.encode() in environ:
            return int(proc.name)
    return None
