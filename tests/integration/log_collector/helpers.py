"""Running the log-collector as a real process, and feeding it lines and events."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis

from events import keys
from events.model import AttemptCompleted, AttemptFailed, Event, RankExited, Reason
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.output import ingest
from services.output.reading import INGEST_GROUP
from tests import factories as f
from tests.services import ServiceProcess
from tests.waiting import eventually


class CollectorProcess(ServiceProcess):
    """One ``python -m services.log_collector`` process; its stderr goes to ``log``."""

    def __init__(self, url: str, archive_dir: Path, name: str, log: Path, **extra: str) -> None:
        env = {
            **os.environ,
            "RUNPLANE_REDIS_URL": url,
            "RUNPLANE_ARCHIVE_DIR": str(archive_dir),
            "RUNPLANE_COLLECTOR_NAME": name,
            "RUNPLANE_ARCHIVE_POLL_MS": "50",
            "RUNPLANE_INGEST_BLOCK_MS": "100",
            "RUNPLANE_LEASE_TTL_MS": "3000",
            "RUNPLANE_CLAIM_IDLE_MS": "1000",
            **extra,
        }
        super().__init__("services.log_collector", env, log)
        self.url = url
        self.name = name
        self.log = log

    async def wait_active(self, client: aioredis.Redis) -> None:
        await eventually(
            lambda: client.get(keys.log_collector_lease()),
            equals=self.name.encode(),
            what=f"collector {self.name} holding the ingest lease (log: {self.log})",
        )


@asynccontextmanager
async def collector(
    url: str, client: aioredis.Redis, archive_dir: Path, name: str = "c1", **extra: str
) -> AsyncIterator[CollectorProcess]:
    """A running collector holding the lease (``extra``: more of its environment); stopped
    (SIGTERM) at the end."""
    proc = await CollectorProcess(
        url, archive_dir, name, archive_dir.parent / f"{name}.log", **extra
    ).start()
    try:
        await proc.wait_active(client)
        yield proc
    finally:
        await proc.stop()


async def send(client: aioredis.Redis, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
    """Append lines to the ingest stream in order, like ``ingest.send``; their ids."""
    pipe = client.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(keys.log_ingest(), fields)  # type: ignore[arg-type]
    return [position.decode() for position in await pipe.execute()]


def lines(run_id: str, attempt: int, rank: int, texts: Sequence[bytes]) -> list[dict[bytes, bytes]]:
    return [ingest.ingest_fields(run_id, attempt, rank, ingest.STDOUT, text) for text in texts]


async def stored_ids(client: aioredis.Redis, run_id: str, attempt: int, rank: int) -> list[str]:
    stream = keys.rank_log(run_id, attempt, rank)
    ids: list[str] = []
    start = "-"
    while True:
        page = cast(
            list[tuple[bytes, object]], await client.xrange(stream, min=start, count=10_000)
        )
        ids += [position.decode() for position, _ in page]
        if len(page) < 10_000:
            return ids
        start = f"({ids[-1]}"


async def stream_len(client: aioredis.Redis, run_id: str, attempt: int, rank: int) -> int:
    return await client.xlen(keys.rank_log(run_id, attempt, rank))


async def pending(client: aioredis.Redis) -> int:
    with contextlib.suppress(Exception):
        return int((await client.xpending(keys.log_ingest(), INGEST_GROUP))["pending"])
    return -1


async def append(url: str, *events: Event) -> list[str]:
    """Append each event on its own (no version check); their positions in the log."""
    store = EventStore(connect(url), Settings(redis_url=url))
    try:
        return [
            (await store.append([event], expected_version=None)).positions[0] for event in events
        ]
    finally:
        await store.close()


def exited(run_id: str, attempt: int, rank: int, **outcome: object) -> RankExited:
    return RankExited(
        id=f.new_id(),
        actor="node-agent@test",
        run_id=run_id,
        attempt=attempt,
        rank=rank,
        node=f"node-{rank}",
        **outcome,  # type: ignore[arg-type]
    )


def completed(run_id: str, attempt: int = 0) -> AttemptCompleted:
    return AttemptCompleted(id=f.new_id(), actor="scheduler@test", run_id=run_id, attempt=attempt)


def failed(run_id: str, attempt: int = 0, exit_code: int = 1) -> AttemptFailed:
    return AttemptFailed(
        id=f.new_id(),
        actor="scheduler@test",
        run_id=run_id,
        attempt=attempt,
        reason=Reason(category="user", code="Error", exit_code=exit_code),
    )


async def archived(client: aioredis.Redis, run_id: str, attempt: int, ranks: Sequence[int]) -> bool:
    """Every rank has its archive path recorded and its stream gone."""
    meta = keys.attempt_logs(run_id, attempt)
    for rank in ranks:
        if not await client.hexists(meta, f"archive:{rank}"):
            return False
        if await client.exists(keys.rank_log(run_id, attempt, rank)):
            return False
    return True
