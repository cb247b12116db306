"""New fold versions and rebuilds: built beside the active build, switched once caught up,
readers never without rows; the old build dropped after the grace period."""

from __future__ import annotations

import asyncio
import random
from typing import ClassVar

import pytest

from events import keys
from projections.audit import AuditProjection
from projections.base import Projection
from projections.catalog import make_all
from projections.engine import Batch
from projections.errors import Superseded
from projections.rebuild import rebuild_into
from projections.run_status import RunStatusProjection
from projections.runner import Runner
from services.projector.projector import Projector
from tests.unit.projections.fakes import FakeGroup, FakeLog, FakeStore
from tests.unit.projections.simulator import history

OLD, NEW = f"v{RunStatusProjection.version}", f"v{RunStatusProjection.version + 1}"


class RunStatusV2(RunStatusProjection):
    version: ClassVar[int] = RunStatusProjection.version + 1


class WatchedStore(FakeStore):
    """Checks after every commit that readers of run_status find rows in the active build."""

    def __init__(self) -> None:
        super().__init__()
        self.switches: list[str] = []

    async def commit(self, batch: Batch) -> None:
        before = await self.active("run_status")
        await super().commit(batch)
        after = await self.active("run_status")
        if after != before and after is not None:
            self.switches.append(after)
        if after is not None:
            assert self.build("run_status"), f"readers of {after} see no rows"


def with_v2() -> list[Projection]:
    return [RunStatusV2(), *make_all()[1:]]


async def follow(projector: Projector, log: FakeLog) -> None:
    while not log.complete:
        log.reveal(7)
        await projector.step(0)
    await projector.step(0)


def test_a_new_fold_version_is_built_beside_and_switched_when_caught_up() -> None:
    entries = history(random.Random(3), 600, runs=10)

    async def scenario() -> WatchedStore:
        store = WatchedStore()
        log = FakeLog(entries)
        group = FakeGroup(log)
        log.reveal(len(entries) // 2)
        old = Projector(store, log, group, make_all, commit_every=10, page=10)
        await old.start()
        assert store.switches == [OLD]
        new = Projector(store, log, group, with_v2, commit_every=10, page=10, retire_after_s=0)
        await new.start()  # catch-up commits many batches while readers stay on OLD
        assert store.switches == [OLD, NEW]
        await follow(new, log)
        await new.retire_due(float("inf"))
        return store

    store = asyncio.run(scenario())
    assert store.build("run_status", NEW) == asyncio.run(rebuilt_with_v2(entries))
    assert not any(k.startswith(keys.projection_prefix("run_status", OLD)) for k in store.hashes)
    assert await_active(store) == NEW


async def rebuilt_with_v2(entries: list[tuple[str, dict[bytes, bytes]]]) -> dict[str, object]:
    store = FakeStore()
    log = FakeLog(entries)
    log.reveal(len(entries))
    await Runner(store, log, [RunStatusV2()]).start()
    return store.build("run_status")


def await_active(store: FakeStore) -> str | None:
    return asyncio.run(store.active("run_status"))


def test_a_rebuild_switches_readers_and_the_running_projector_adopts_it() -> None:
    entries = history(random.Random(4), 500, runs=10)

    async def scenario() -> tuple[FakeStore, str]:
        store = WatchedStore()
        log = FakeLog(entries)
        group = FakeGroup(log)
        log.reveal(len(entries) // 2)
        projector = Projector(store, log, group, make_all, retire_after_s=0)
        await projector.start()
        before = store.build("audit")
        fresh = (await rebuild_into(store, log, [make_all()[3]], now_ms=123))["audit"]
        assert fresh == f"v{AuditProjection.version}r123"
        assert store.build("audit") == before  # same log, same rows
        log.reveal(len(entries))
        with pytest.raises(Superseded, match="moved"):
            await projector.step(0)
        await projector.start()  # what run() does on Superseded
        await follow(projector, log)
        await projector.retire_due(float("inf"))
        return store, fresh

    store, fresh = asyncio.run(scenario())
    assert asyncio.run(store.active("audit")) == fresh
    full = FakeStore()
    log = FakeLog(entries)
    log.reveal(len(entries))
    asyncio.run(Runner(full, log, make_all()).start())
    assert store.build("audit") == full.build("audit")
    assert store.build("billing") == full.build("billing")
    assert not store.build("audit", "v1")


def test_a_second_projector_writing_the_same_build_is_refused() -> None:
    entries = history(random.Random(5), 200, runs=4)

    async def scenario() -> None:
        store = FakeStore()
        log = FakeLog(entries)
        log.reveal(len(entries) // 2)
        first = Projector(store, log, FakeGroup(log), make_all)
        second = Projector(store, log, FakeGroup(log), make_all, batch=3)
        await first.start()
        await second.start()
        log.reveal(len(entries))
        await first.step(0)
        with pytest.raises(Superseded, match="conflict"):
            await second.step(0)

    asyncio.run(scenario())


def test_an_undecodable_entry_is_skipped_by_every_fold_and_dead_lettered_once() -> None:
    entries = history(random.Random(6), 200, runs=4)
    middle = entries[len(entries) // 2][0]
    ms, _, seq = middle.partition("-")
    broken = (f"{ms}-{int(seq) + 100}", {b"k": b"run.teleported@1", b"e": b"{}"})
    with_broken = sorted([*entries, broken], key=lambda e: tuple(map(int, e[0].split("-"))))

    async def scenario() -> tuple[FakeStore, FakeGroup]:
        store, log = FakeStore(), FakeLog(with_broken)
        group = FakeGroup(log)
        log.reveal(len(with_broken) // 3)
        projector = Projector(store, log, group, make_all, batch=7)
        await projector.start()
        await follow(projector, log)
        again = Projector(store, log, group, make_all, batch=7)  # a restart: not again
        await again.start()
        return store, group

    store, group = asyncio.run(scenario())
    assert [position for position, _ in group.dead] == [broken[0]]
    assert "unknown event type 'run.teleported'" in group.dead[0][1]
    clean = FakeStore()
    log = FakeLog(entries)
    log.reveal(len(entries))
    asyncio.run(Runner(clean, log, make_all()).start())
    for name in ("run_status", "attempts", "billing", "audit", "utilization"):
        assert {k: v for k, v in store.build(name).items() if k != "checkpoint"} == {
            k: v for k, v in clean.build(name).items() if k != "checkpoint"
        }
