"""Consumer groups on Redis streams: created at position 0, their lag, and their dead letters.

A group that a consumer library creates by itself (FastStream does) starts at ``$`` and skips
everything written before it existed; every group runplane reads is created here first, at 0.
Free of FastStream: the projector and the log-collector's ingester read their groups with
plain redis-py and need not load the broker to create one.

A process that ensures a group exports its lag, ``runplane_consumer_lag_events{group}``: the
entries of the stream the group has not finished, those not yet delivered (the server's
``lag``) and those delivered but not yet acknowledged, asked of the server at each scrape.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from events import keys
from services.core import metrics

CONSUMER_LAG = Gauge(
    "runplane_consumer_lag_events",
    "Entries a consumer group has not finished: not yet delivered, or not yet acknowledged.",
    ["group"],
    registry=metrics.REGISTRY,
)


async def ensure_group(client: Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` at position 0 unless it exists (the stream too)."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    metrics.refresh_with(f"lag:{stream}:{group}", partial(measure_lag, client, stream, group))


async def group_info(client: Redis, stream: str, group: str) -> dict[str, Any] | None:
    """What ``XINFO GROUPS`` says of ``group`` on ``stream`` (None: no such group)."""
    for info in await client.xinfo_groups(stream):
        if text(info["name"]) == group:
            return dict(info)
    return None


def text(value: bytes | str) -> str:
    """A name or a position in what ``XINFO`` answers: bytes, or str on a decoding client."""
    return value.decode() if isinstance(value, bytes) else value


async def measure_lag(client: Redis, stream: str, group: str) -> None:
    """Set ``group``'s lag on ``stream`` from the server (left as it was where the server cannot
    tell: a stream trimmed past what the group read)."""
    info = await group_info(client, stream, group)
    if info is not None and info.get("lag") is not None:
        CONSUMER_LAG.labels(group=group).set(int(info["lag"]) + int(info["pending"]))


class Delivery(NamedTuple):
    """Where an entry was read: its stream, by which group and consumer, at which position."""

    stream: str
    group: str
    consumer: str
    position: str


async def dead_letter(
    client: Redis, where: Delivery, fields: Mapping[bytes, bytes], why: str
) -> None:
    """Keep an entry nobody can decode (or handle), whole, with the error and where it was read,
    on its group's dead-letter stream (``keys.dead_letter_stream``): fields ``stream``,
    ``position``, ``consumer``, ``error``, and ``field:<name>`` for each of the entry's own."""
    entry: dict[bytes | str, bytes | str] = {
        b"stream": where.stream,
        b"position": where.position,
        b"consumer": where.consumer,
        b"error": why,
    }
    entry.update({b"field:" + name: value for name, value in fields.items()})
    await client.xadd(keys.dead_letter_stream(where.group), entry)  # type: ignore[arg-type]
