"""How a rebuild of several projections is split over processes ("lanes"); pure.

A rebuild is CPU-bound in one Python process: reading, decoding, folding, rendering the rows
and encoding the commits of all five projections take about three times the CPU the server
spends serving the reads and storing the rows. ``plan`` splits the projections into groups of
about equal cost (``COST``), one per lane; ``services.projector.lanes`` runs each group in its
own process. The groups share nothing but the server, so each projection's build is exactly
the one ``projections.rebuild.rebuild_into`` makes alone (same rows, same checkpoint), and a
lane that fails leaves the other lanes' builds standing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import redis.asyncio as aioredis
import structlog

from projections.catalog import make
from projections.errors import ProjectionsError
from projections.rebuild import rebuild_namespace
from projections.storage import RedisStore

log = structlog.get_logger("projections.lanes")

#: Relative CPU cost of folding, rendering and storing each projection, beyond reading and
#: decoding the log (measured alone on the 1M-event log of ``bench.projections``: attempts
#: 4.7 s, audit 3.6, run_status 2.5, utilization 1.3, billing 1.1). Unknown names weigh 1.
COST: dict[str, int] = {"attempts": 4, "audit": 4, "run_status": 2, "billing": 1, "utilization": 1}


def default_lanes(names: Sequence[str]) -> int:
    """One lane per core, never more than there are projections."""
    return max(1, min(len(names), os.cpu_count() or 1))


def plan(names: Sequence[str], lanes: int) -> list[list[str]]:
    """The projections of each lane: the costliest first, each to the lane with least so far.

    Deterministic for the same names and lanes; no lane is empty."""
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, not {lanes}")
    groups: list[list[str]] = [[] for _ in range(min(lanes, len(names)))]
    loads = [0] * len(groups)
    for name in sorted(names, key=lambda n: (-COST.get(n, 1), n)):
        lane = loads.index(min(loads))
        groups[lane].append(name)
        loads[lane] += COST.get(name, 1)
    return groups


async def drop_unfinished(client: aioredis.Redis, names: Sequence[str], now_ms: int) -> None:
    """Drop the builds a rebuild at ``now_ms`` left unfinished (never one readers read: a
    lane switches all its projections in its last commit, or none). Best effort: a failure
    here is logged, and the lane's own error is what the caller reports."""
    try:
        store = RedisStore(client)
        for name in names:
            namespace = rebuild_namespace(make(name), now_ms)
            if await store.active(name) != namespace:
                dropped = await store.drop(name, namespace)
                log.info("projection.dropped", projection=name, namespace=namespace, keys=dropped)
    except Exception as exc:  # noqa: BLE001 - best effort, see above
        log.warning("projection.drop_failed", projections=list(names), error=str(exc))


class LaneFailed(ProjectionsError):
    def __init__(self, names: list[str], why: str) -> None:
        super().__init__(f"rebuilding {', '.join(names)} failed: {why}")
        self.names = names
