"""The projector as a process: the projector's loop until SIGTERM or SIGINT.

One projector is active at a time: it holds the projector lease (``services.core.lease``), and
its commits are fenced by it (``projections/commit.lua``), so two projectors never split the
consumer group's entries between two partial memories and store rows from either. The others
stand by and take over when the lease is released (clean stop) or expires (kill -9).

It reads its consumer group in batches itself (one batch, one transaction), so it needs no
broker and does not load FastStream (about 6 MiB a process); the edge every service shares is
settings, structlog JSON, and a stop on SIGTERM/SIGINT that lets the batch in hand finish. A
loop that fails (the server gone for a while) is logged and started again from the store after
a pause; state is always rebuilt from the log, so a kill -9 at any moment is just a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from events import keys
from projections.catalog import make_all
from projections.errors import Superseded
from projections.storage import RedisStore
from services.core import partitions
from services.core.aio import stop_on_signals, wait_event
from services.core.archive import ArchivedLog
from services.core.client import connect_with
from services.core.lease import Lease, LeaseLost
from services.projector.cooling import Cooler
from services.projector.group import RedisGroup
from services.projector.metrics import export_lag
from services.projector.projector import Projector
from services.projector.settings import ProjectorSettings

log = structlog.get_logger("services.projector")
_PAUSE_S = 1.0
_GRACE_S = 2.0


def build_projector(
    settings: ProjectorSettings, client: aioredis.Redis, fence: tuple[str, str] | None = None
) -> Projector:
    """The projector of every projection, on ``client`` (bytes replies); its commits are taken
    only while ``fence`` (lease key, token) holds."""
    group, consumer, each = (
        settings.projector_group,
        settings.projector_consumer,
        range(settings.partitions),
    )
    store = RedisStore(client, fence)
    return Projector(
        store,
        [ArchivedLog(client, p) for p in each],
        [RedisGroup(client, group, consumer, p) for p in each],
        make_all,
        batch=settings.projector_batch,
        page=settings.projector_page,
        commit_every=settings.projector_commit_every,
        claim_idle_ms=settings.claim_idle_ms,
        retire_after_s=settings.projector_retire_after_s,
        rest_ms=round(settings.projector_rest_s * 1000),
        cooler=Cooler(client, store, settings.partitions, runs=settings.projector_cool_runs),
        cool_every_s=settings.projector_cool_every_s,
    )


async def serve(settings: ProjectorSettings, stop: asyncio.Event) -> None:
    """Stand by until this instance holds the projector lease, then project until ``stop`` is
    set or the lease is lost (then stand by again); after a failure, start again."""
    client = connect_with(settings)
    # Standing by too: the lag is read from the store, not this one's memory.
    export_lag(client, settings.partitions)
    token = f"{settings.projector_consumer}/{uuid.uuid4().hex[:8]}"
    lease = Lease(client, keys.projector_lease(), token, settings.projector_lease_ttl_ms)
    try:
        while await _stand_by(lease, stop):
            try:
                await _term(settings, client, lease, stop)
            except* (LeaseLost, Superseded) as deposed:  # Superseded escapes only as "fenced"
                log.warning("projector.deposed", why=str(deposed.exceptions[0]))
            except* Exception:
                log.exception("projector.failed")
                await wait_event(stop, _PAUSE_S)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await lease.release()  # a standby takes over now, not after the expiry
        await client.aclose()


async def _stand_by(lease: Lease, stop: asyncio.Event) -> bool:
    """Until this instance holds the lease (True) or ``stop`` is set (False)."""
    told = False
    while not stop.is_set():
        try:
            if await lease.hold():
                log.info("projector.active", lease=lease.token)
                return True
            if not told:
                log.info("projector.standby", holder=await lease.holder())
                told = True
        except (RedisError, OSError) as exc:
            log.warning("projector.standby_trouble", error=repr(exc))
        await wait_event(stop, lease.ttl_ms / 5000)
    return False


async def _term(
    settings: ProjectorSettings, client: aioredis.Redis, lease: Lease, stop: asyncio.Event
) -> None:
    """One term as the active projector: until ``stop``, or the lease is lost (raises)."""
    await partitions.check(client, settings.partitions)
    projector = build_projector(settings, client, (lease.key, lease.token))
    async with asyncio.TaskGroup() as tasks:
        keeper = tasks.create_task(lease.keep())
        await projector.run(stop, poll_ms=settings.projector_poll_ms)
        keeper.cancel()


async def run(settings: ProjectorSettings) -> None:
    """Project (or stand by) until SIGTERM or SIGINT; then the batch in hand may finish."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    log.info("projector.starting", consumer=settings.projector_consumer)
    serving = asyncio.create_task(serve(settings, stop))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            # Between two batches the loop sees ``stop`` at once; in the middle of a long
            # catch-up it is cancelled, which is safe anywhere (a kill -9 is too).
            done, _ = await asyncio.wait([serving], timeout=_GRACE_S)
            if not done:
                serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving  # unstopped, it ends only by failing: the process ends with the error
    finally:
        stopping.cancel()
    log.info("projector.stopped")
