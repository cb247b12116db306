"""The projector's metrics: how far each projection is behind the log, in log time.

``runplane_projection_lag_seconds{projection}``: the log time of the newest entry on a
partition's global stream minus the log time of the entry of that partition the projection's
active build has checkpointed (what its readers read is current up to there), 0 when it stands
at the newest entry; the most of that over the partitions. Log time is the millisecond part of
an entry's position, which the server stamps as it appends. A projection with no build yet, or
one that has stored nothing of a partition, counts from that partition's first entry: it is
behind by all of it.

Asked of the server at each scrape (``services.core.metrics.refresh_with``), so every projector
process, active or standing by, tells the same: the store's checkpoints, not its own memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge

from events import keys
from projections.base import ZERO, Position, parse_checkpoint, parse_position
from projections.catalog import NAMES
from services.core import metrics

PROJECTION_LAG = Gauge(
    "runplane_projection_lag_seconds",
    "Log time from the entry a projection has checkpointed to the newest entry on the log.",
    ["projection"],
    registry=metrics.REGISTRY,
)


RUNS_COOLED = Counter(
    "runplane_projection_runs_cooled",
    "Archived runs whose rows left Valkey for the cold rows (Parquet), every build at once.",
    registry=metrics.REGISTRY,
)
RUNS_EVICTED = Counter(
    "runplane_projection_runs_evicted",
    "Runs at rest that left a fold's memory once their rows were stored, counted per fold.",
    registry=metrics.REGISTRY,
)
RUNS_RESTORED = Counter(
    "runplane_projection_runs_restored",
    "Runs taken back into a fold's memory from their stored rows (a new event of theirs).",
    registry=metrics.REGISTRY,
)


def lag_seconds(newest: Position, first: Position, checkpoint: Position) -> float:
    """How far ``checkpoint`` is behind ``newest`` in log time (``first``: the log's first
    entry, where a projection that stored nothing stands)."""
    if checkpoint >= newest:
        return 0.0
    since = checkpoint if checkpoint != ZERO else first
    return max(0, newest[0] - since[0]) / 1000


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def _end(client: aioredis.Redis, stream: str, newest: bool) -> Position | None:
    read = client.xrevrange(stream, count=1) if newest else client.xrange(stream, count=1)
    entries = cast(list[tuple[bytes | str, Any]], await read)
    return parse_position(cast(str, _text(entries[0][0]))) if entries else None


async def measure_lag(
    client: aioredis.Redis, names: Sequence[str] = NAMES, partitions: int = 1
) -> None:
    """Set each projection's lag from the server: each partition's ends, the active builds and
    their checkpoints."""
    ends: list[tuple[Position, Position] | None] = []
    for partition in range(partitions):  # one stream at a time: each in its own slot
        stream = keys.log_stream(partition)
        newest = await _end(client, stream, newest=True)
        first = await _end(client, stream, newest=False) if newest is not None else None
        ends.append(None if newest is None else (newest, first or newest))
    found = await _get(client, [keys.projection_active(name) for name in names])
    builds = {name: active for name, active in zip(names, found, strict=True) if active}
    checkpoints = [keys.projection_checkpoint(name, active) for name, active in builds.items()]
    stored = dict(zip(builds, await _get(client, checkpoints), strict=True))
    for name in names:
        value = stored.get(name)
        checkpoint = parse_checkpoint(value) if value else ()
        lag = 0.0
        for partition, end in enumerate(ends):
            if end is not None:  # an empty partition: nothing to be behind
                at = checkpoint[partition] if partition < len(checkpoint) else ZERO
                lag = max(lag, lag_seconds(end[0], end[1], at))
        PROJECTION_LAG.labels(projection=name).set(lag)


async def _get(client: aioredis.Redis, names: Sequence[str]) -> list[str | None]:
    """The values of the keys ``names``, in one round trip (GETs: what the projector's ACL
    user may run, ``services.core.acl``)."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(name)
    return [_text(value) for value in await pipe.execute()]


def export_lag(client: aioredis.Redis, partitions: int = 1) -> None:
    """Have every scrape of this process set the projections' lag, asked of ``client`` (a log
    of ``partitions``)."""
    metrics.refresh_with("projection-lag", partial(measure_lag, client, NAMES, partitions))
