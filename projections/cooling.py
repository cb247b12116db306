"""Moving runs at rest out of the store: their rows to the cold rows, then out of Valkey.

``cool`` takes runs the caller chose (archived: ``services.projector.cooling``), lets them go
from the folds that hold them at rest, and, for each one no fold holds then, reads its rows
in every build readers read (``Evicting.as_stored``: bodies and memberships; a build that
holds none of them already is left as it is), hands them all to ``write`` (a segment of
``projections.cold``, durable before it returns) and only then deletes them from the store,
each run at once in every build and only if it is as read (``RedisStore.cool``).

A crash before the delete leaves the run in Valkey and a copy in a segment: readers read
Valkey first, and a later pass copies it again. A run that moved between the read and the
delete stays in Valkey, whole. A run that comes back takes its rows from the latest segment
(``Runner.restore``) and writes them back with its next batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

from projections.base import Evicting, Row, RowKey
from projections.cold import Placed
from projections.engine import Build
from projections.runner import Runner
from projections.storage import ColdBuild


class Cools(Protocol):
    async def rows(
        self, wanted: Sequence[tuple[str, str, Sequence[RowKey]]]
    ) -> list[list[bytes | None]]: ...

    async def cool(self, runs: Sequence[Sequence[ColdBuild]]) -> int: ...


async def cool(
    runner: Runner,
    store: Cools,
    runs: Collection[str],
    write: Callable[[list[Placed]], Awaitable[None]],
) -> int:
    """Move ``runs`` (at rest, archived) out of the store, letting them go from the folds
    that hold them (a run a fold holds at work stays); how many left. Only while every build
    readers read has stored all it folded (otherwise none)."""
    builds = [b for b in runner.engine.builds if isinstance(b.projection, Evicting)]
    stored = {b.name for b in runner.engine.stored_all()}
    if not builds or any(not b.active or b.name not in stored for b in builds):
        return 0
    folds = [_fold(b) for b in builds]
    for run in runs:  # archived, so at rest long since: its stored rows say all of it
        runner.evicted += sum(fold.let_go(run) for fold in folds if fold.holds(run))
    free = [run for run in runs if not any(fold.holds(run) for fold in folds)]
    read = await _read(store, builds, free)
    moving = [(run, found) for run, found in zip(free, read, strict=True) if _any_rows(found)]
    if not moving:
        return 0
    await write(
        [
            (name, namespace, run, row)
            for run, found in moving
            for name, namespace, _, rows in found
            for row in rows
        ]
    )
    return await store.cool([found for _, found in moving])


async def _read(
    store: Cools, builds: Sequence[Build], runs: Sequence[str]
) -> list[list[ColdBuild]]:
    """Each run's rows in each build: what ``restoring``, then ``as_stored``, ask for."""
    folds = {b.name: _fold(b) for b in builds}  # a protocol's isinstance is slow: once
    asks = [(b, run) for run in runs for b in builds]
    found: list[dict[RowKey, bytes | None]] = [{} for _ in asks]
    rows: list[list[Row] | None] = [None for _ in asks]
    while True:
        wanted: list[tuple[int, list[RowKey]]] = []
        for i, (build, run) in enumerate(asks):
            if rows[i] is not None:
                continue
            fold = folds[build.name]
            more = fold.restoring(run, found[i])
            if not more:
                more, stored = fold.as_stored(run, found[i])
                if not more:
                    rows[i] = stored
                    continue
            wanted.append((i, more))
        if not wanted:
            break
        bodies = await store.rows(
            [(asks[i][0].name, asks[i][0].namespace, keys) for i, keys in wanted]
        )
        for (i, keys), got in zip(wanted, bodies, strict=True):
            found[i].update(zip(keys, got, strict=True))
    per_run = len(builds)
    return [
        [
            (build.name, build.namespace, found[i], rows[i] or [])
            for i, (build, _) in enumerate(asks[at : at + per_run], start=at)
        ]
        for at in range(0, len(asks), per_run)
    ]


def _any_rows(found: Sequence[ColdBuild]) -> bool:
    return any(rows for _, _, _, rows in found)


def _fold(build: Build) -> Evicting:
    fold = build.projection
    assert isinstance(fold, Evicting)
    return fold
