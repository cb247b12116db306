"""Rebuilding projections from the log: each into a fresh namespace, in one pass over it,
switched to once caught up (``mcli projections rebuild``; ``services.projector.lanes`` spreads
them over several processes)."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from projections.base import Projection
from projections.catalog import make
from projections.engine import Engine
from projections.reader import LogReader, RedisLogReader
from projections.runner import BuildStore, Runner
from projections.storage import RedisStore


async def rebuild(
    client: aioredis.Redis,
    names: Sequence[str],
    *,
    now_ms: int,
    switch: bool = True,
    reader: LogReader | Sequence[LogReader] | None = None,
    partitions: int = 1,
) -> dict[str, str]:
    """Rebuild the projections ``names`` from position zero on ``client``'s server, in one pass
    over the log (``reader``, one per partition; default: the ``partitions`` streams themselves,
    without their archive): each into a fresh namespace, switched to when caught up unless
    ``switch`` is False. ``now_ms`` names the builds. Returns each one's namespace, by name.
    (``services.projector.lanes`` spreads them over several processes.)"""
    return await rebuild_into(
        RedisStore(client),
        reader if reader is not None else [RedisLogReader(client, p) for p in range(partitions)],
        [make(n) for n in names],
        now_ms=now_ms,
        switch=switch,
    )


def rebuild_namespace(projection: Projection, now_ms: int) -> str:
    """The namespace of a rebuild of ``projection`` started at ``now_ms``."""
    return f"v{projection.version}r{now_ms}"


async def rebuild_into(
    store: BuildStore,
    reader: LogReader | Sequence[LogReader],
    projections: Sequence[Projection],
    *,
    now_ms: int,
    switch: bool = True,
    page: int = 5000,
) -> dict[str, str]:
    """Fold ``projections`` (fresh instances) from position zero into new namespaces, in one
    pass over the log.

    With ``switch`` readers are moved to each once it has caught up (a running projector
    notices and adopts it); the old build stays until its owner drops it. Returns the new
    namespace of each projection, by name.
    """
    fresh = {p.name: rebuild_namespace(p, now_ms) for p in projections}
    runner = Runner(store, reader, projections, page=page)
    if switch:
        await runner.start(namespace=lambda p: fresh[p.name], serving=False)
        return fresh
    builds = []
    for projection in projections:
        build = await runner.plan(projection, lambda p: fresh[p.name])
        build.expect_active = (await store.active(projection.name)) or ""
        builds.append(build)
    runner.engine = Engine(builds, len(runner.readers))
    await runner.catch_up()
    await runner.commit()
    return fresh
