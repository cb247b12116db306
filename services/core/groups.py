"""Consumer groups on Redis streams: created at position 0, and their dead letters.

A group that a consumer library creates by itself (FastStream does) starts at ``$`` and skips
everything written before it existed; every group runplane reads is created here first, at 0.
Free of FastStream: the projector and the log-collector's ingester read their groups with
plain redis-py and need not load the broker to create one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from events import keys


async def ensure_group(client: Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` at position 0 unless it exists (the stream too)."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


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
