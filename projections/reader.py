"""Reading the global log for the projections: a reader per partition (``LogReader``), and the
one over a partition's stream (``RedisLogReader``; ``services.core.archive.ArchivedLog`` reads
the archive, then the stream)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import redis.asyncio as aioredis

from events import keys
from projections.engine import Fields

#: An entry of the global log: its position, then its fields as the server sends them.
Entry = tuple[str, Fields]


class LogReader(Protocol):
    async def read(self, after: str, count: int) -> Sequence[Entry]:
        """Up to ``count`` entries of the global log after ``after`` (exclusive), in order."""
        ...


class RedisLogReader:
    """``LogReader`` over one partition's global stream.

    Reads through a client that skips redis-py's per-entry reply callback (it builds a tuple
    and a dict per entry; half the cost of a read), and hands over each entry's fields as the
    server sends them (``[field, value, ...]``): the engine decodes that layout directly.
    """

    def __init__(self, client: aioredis.Redis, partition: int = 0) -> None:
        pool = getattr(client, "connection_pool", None)
        # A cluster client (no one pool) keeps its reply callbacks: its pages are flattened.
        self.flatten = pool is None
        self.redis = client if pool is None else aioredis.Redis(connection_pool=pool)
        if pool is not None:
            self.redis.set_response_callback("XRANGE", _raw)
        self.stream = keys.log_stream(partition)

    async def read(self, after: str, count: int) -> Sequence[Entry]:
        start = "-" if after in ("0", "0-0") else f"({after}"
        entries = cast(
            list[list[Any]], await self.redis.xrange(self.stream, start, "+", count=count)
        )
        if self.flatten:
            return [
                (position.decode(), [item for pair in fields.items() for item in pair])
                for position, fields in entries
            ]
        return [(position.decode(), flat) for position, flat in entries]


def _raw(response: Any, **_: Any) -> Any:
    return response


def each(reader: LogReader | Sequence[LogReader]) -> list[LogReader]:
    """One reader per partition (a single reader is partition 0's, of one)."""
    return list(reader) if isinstance(reader, Sequence) else [reader]
