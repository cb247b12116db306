"""The event store's reads: a history, the global log, a replay (``EventStore`` writes too).

Reads return ``events.codec.Recorded``: position, aggregate version and event.

Invariants:
- Reads of the global log (``read_log``, ``read_log_entries``, ``replay``) go through
  ``services.core.archive.ArchivedLog``: the archived part first, then the stream, each entry
  once.
- A run's own stream goes once the archive holds all of it and the run is at rest
  (``services.core.archiver``); ``history`` then reads it from the segments the archive's
  index of retired histories names (``services.core.retired``). The server keeps no record of
  it, only a count of its bucket's retirements, so a run that never was costs no file opened.
- The first read (or append) refuses a log recorded with another number of partitions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import redis.asyncio as aioredis

from events import codec, keys
from events.codec import Recorded
from events.lifecycle import RunState, evolve
from events.model import RunEvent, is_run, run_aggregate
from services.core import partitions
from services.core.archive import ArchivedLog, raw_entries
from services.core.client import is_cluster, raw_ranges
from services.core.retired import Retired
from services.core.settings import Settings

_PAGE = 10_000
RawEntry = tuple[bytes, dict[bytes, bytes]]


class EventReader:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        # The same pool, without reply callbacks for XRANGE (see ``_range``).
        self._raw = raw_ranges(client)
        self._logs: dict[int, ArchivedLog] = {}
        self._partitions_checked = False

    async def close(self) -> None:
        await self.redis.aclose()
        if is_cluster(self._raw):
            await self._raw.aclose()

    async def history(self, aggregate: str) -> list[Recorded]:
        """Every event of one run (``run:<id>``), node (``node:<name>``) or user, in order: from
        the archive where its stream went there (``services.core.retired``: it has no stream
        until restored)."""
        partition = keys.partition_of(aggregate, self.settings.partitions)
        stream, retired = keys.aggregate_stream(aggregate, partition), keys.retired(partition)
        await self._check_partitions()
        while True:
            # In this order: a former version's field before the stream (a restore deletes it as
            # the stream comes back), the bucket's count after it (a retirement raises it as the
            # stream goes). A stream found missing is then one that never was, or one the field
            # or the archive's index knows.
            pipe = self._raw.pipeline(transaction=False)
            pipe.hget(retired, stream)
            pipe.execute_command("XRANGE", stream, "-", "+", "COUNT", _PAGE)
            pipe.hget(retired, keys.retirement_bucket(stream))
            former, page, count = await pipe.execute()
            if page:
                live = [codec.recorded_flat(position, flat) for position, flat in page]
                if len(page) < _PAGE:
                    return live
                live += [r async for r in self._range(stream, f"({page[-1][0].decode()}")]
                if await self._raw.execute_command(  # type: ignore[no-untyped-call]
                    "XRANGE", stream, "-", "+", "COUNT", 1
                ):
                    return live
                continue  # retired while it was read: read it again
            if former is not None:
                kept: Retired | None = Retired.decode(former)
            elif count is None or not is_run(aggregate):
                return []  # no history of its bucket ever went: it never was
            else:
                kept = await self._log(partition).retired(aggregate)
            if kept is None:
                return []
            old = await self._log(partition).history(aggregate, kept)
            return [codec.recorded_from(position, flat) for position, flat in old]

    async def wait_history(
        self, aggregate: str, after: str, block_ms: int | None = None
    ) -> list[Recorded]:
        """The events of one aggregate after position ``after`` (exclusive), waiting up to
        ``block_ms`` for the first one to be appended (one blocking read; None: no wait); []
        if none came."""
        stream = keys.aggregate_stream(
            aggregate, keys.partition_of(aggregate, self.settings.partitions)
        )
        reply = await self.redis.xread({stream: after}, count=_PAGE, block=block_ms)
        if not reply:
            return []
        entries = cast(list[list[Any]], reply)[0][1]
        return [_recorded(position, fields) for position, fields in entries]

    async def load_run(self, run_id: str) -> RunState | None:
        state: RunState | None = None
        for record in await self.history(run_aggregate(run_id)):
            event = record.event
            if not isinstance(event, RunEvent):
                raise TypeError(f"{event.aggregate} event {event.id} in the history of {run_id}")
            state = evolve(state, event)
        return state

    async def read_log(
        self, partition: int = 0, after: str = "0", count: int = 1000
    ) -> list[Recorded]:
        """Up to ``count`` events of the global log after position ``after`` (exclusive),
        archived ones (``services.core.archive``) included."""
        entries = await self._log(partition).read(after, count)
        return [codec.recorded_from(position, flat) for position, flat in entries]

    async def read_log_entries(
        self, partition: int = 0, after: str = "0", count: int = 1000
    ) -> list[RawEntry]:
        """``read_log`` undecoded: for a reader that wants a few kinds of event among many
        (``codec.KIND`` names each entry's) and decodes only those."""
        return raw_entries(await self._log(partition).read(after, count))

    async def replay(self, partition: int = 0, after: str = "0") -> AsyncIterator[Recorded]:
        """The global log of a partition from ``after`` (exclusive) to its current end,
        archived entries first."""
        reader = self._log(partition)
        while True:
            entries = await reader.read(after, _PAGE)
            for position, flat in entries:
                yield codec.recorded_from(position, flat)
            if len(entries) < _PAGE:
                return
            after = entries[-1][0]

    def _log(self, partition: int) -> ArchivedLog:
        log = self._logs.get(partition)
        if log is None:
            log = self._logs[partition] = ArchivedLog(self.redis, partition)
        return log

    async def _range(self, stream: str, start: str) -> AsyncIterator[Recorded]:
        # Pages come as the server sends them (no per-entry tuple and dict from redis-py's
        # reply callback): half of a replay's cost, measured in bench/log.py.
        await self._check_partitions()
        while True:
            entries: list[list[Any]] = await self._raw.execute_command(  # type: ignore[no-untyped-call]
                "XRANGE", stream, start, "+", "COUNT", _PAGE
            )
            for position, flat in entries:
                yield codec.recorded_flat(position, flat)
            if len(entries) < _PAGE:
                return
            start = f"({entries[-1][0].decode()}"

    async def _check_partitions(self) -> None:
        """Refuse (``PartitionsChanged``) a log recorded with another number of partitions, at
        this store's first append or read: with another P, a run's events would be appended to,
        and looked for in, the wrong partition (``services.core.partitions``)."""
        if not self._partitions_checked:
            await partitions.check(self.redis, self.settings.partitions)
            self._partitions_checked = True


def _recorded(raw_position: bytes, fields: dict[bytes, bytes]) -> Recorded:
    return codec.recorded(raw_position.decode(), fields)
