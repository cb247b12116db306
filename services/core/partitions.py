"""The number of partitions a log was made with, recorded on its server.

A run's partition is ``crc32(aggregate) % P`` (``events.keys.partition_of``): a process with
another P would look for runs' events in the wrong partitions and append them there. So the
active scheduler records P on the server the first time it serves (``keys.log_partitions``,
set only if missing), and the scheduler and the projector refuse to serve a log recorded with
another P (``PartitionsChanged``, logged at each try: nothing is read or written meanwhile).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from events import keys
from services.core.errors import StoreError


class PartitionsChanged(StoreError):
    """This process has another number of partitions than the log it was pointed at."""

    def __init__(self, recorded: int, configured: int) -> None:
        super().__init__(
            f"the log was made with {recorded} partitions and RUNPLANE_PARTITIONS is "
            f"{configured}: set it to {recorded} (a log's partitions never change)"
        )
        self.recorded = recorded
        self.configured = configured


async def check(client: aioredis.Redis, partitions: int, *, record: bool = False) -> None:
    """Refuse (``PartitionsChanged``) a log recorded with another number of partitions; with
    ``record``, record ``partitions`` first where nothing is recorded yet."""
    key = keys.log_partitions()
    if record:
        await client.set(key, partitions, nx=True)
    found = await client.get(key)
    if found is not None and int(found) != partitions:
        raise PartitionsChanged(int(found), partitions)
