"""Running the log-collector as a real process, and feeding it lines and events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis

from events import keys
from events.model import AttemptCompleted, AttemptFailed, Event, RankExited, Reason
from services.core.settings import Settings
from services.core.store import EventStore, connect
from services.output import ingest
from services.output.reading import INGEST_GROUP
from tests import factories as f
from tests.waiting import eventually


class CollectorProcess:
    """One ``python -m services.log_collector`` process; its stderr goes to ``log``."""

    def __init__(self, url: str, archive_dir: Path, name: str, log: Path) -> None:
        self.url = url
        self.name = name
        self.log = log
        self.env = {
            **os.environ,
            "RUNPLANE_REDIS_URL": url,
            "RUNPLANE_ARCHIVE_DIR": str(archive_dir),
            "RUNPLANE_COLLECTOR_NAME": name,
            "RUNPLANE_ARCHIVE_POLL_MS": "50",
            "RUNPLANE_INGEST_BLOCK_MS": "100",
            "RUNPLANE_LEASE_TTL_MS": "3000",
            "RUNPLANE_CLAIM_IDLE_MS": "1000",
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> CollectorProcess:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.log_collector",
                env=self.env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
            )
        return self

    async def wait_active(self, client: aioredis.Redis) -> None:
        await eventually(
            lambda: client.get(keys.log_collector_lease()),
            equals=self.name.encode(),
            what=f"collector {self.name} holding the ingest lease (log: {self.log})",
        )

    async def kill(self) -> None:
        """kill -9."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(15):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return cast(int, self.proc.returncode)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


@asynccontextmanager
async def collector(
    url: str, client: aioredis.Redis, archive_dir: Path, name: str = "c1"
) -> AsyncIterator[CollectorProcess]:
    """A running collector holding the lease; stopped (SIGTERM) at the end."""
    proc = await CollectorProcess(
        url, archive_dir, name, archive_dir.parent / f"{name}.log"
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
