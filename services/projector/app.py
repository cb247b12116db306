"""The projector as a process: a FastStream app whose lifespan runs the projector's loop.

It subscribes to nothing through FastStream (it reads its consumer group in batches itself, so
that one batch is one transaction); the app gives it the process edge every service shares:
settings, structlog JSON, graceful stop on SIGTERM/SIGINT. A loop that fails (the server gone
for a while) is logged and started again from the store after a pause; state is always rebuilt
from the log, so a kill -9 at any moment is just a restart.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
import structlog
from faststream import FastStream

from projections.catalog import make_all
from projections.runner import RedisLogReader
from projections.storage import RedisStore
from services.core.aio import wait_event
from services.core.consumer import make_broker
from services.core.store import connect
from services.projector.group import RedisGroup
from services.projector.projector import Projector
from services.projector.settings import ProjectorSettings

log = structlog.get_logger("services.projector")
_PAUSE_S = 1.0
_GRACE_S = 2.0


def build_projector(settings: ProjectorSettings, client: aioredis.Redis) -> Projector:
    """The projector of every projection, on ``client`` (bytes replies)."""
    return Projector(
        RedisStore(client),
        RedisLogReader(client),
        RedisGroup(client, settings.projector_group, settings.projector_consumer),
        make_all,
        batch=settings.projector_batch,
        page=settings.projector_page,
        commit_every=settings.projector_commit_every,
        claim_idle_ms=settings.claim_idle_ms,
        retire_after_s=settings.projector_retire_after_s,
    )


async def serve(settings: ProjectorSettings, stop: asyncio.Event) -> None:
    """Run the projector until ``stop`` is set, starting it again after a failure."""
    client = connect(settings.redis_url)
    try:
        while not stop.is_set():
            projector = build_projector(settings, client)
            try:
                await projector.run(stop, poll_ms=settings.projector_poll_ms)
            except Exception:
                log.exception("projector.failed")
                await wait_event(stop, _PAUSE_S)
    finally:
        await client.aclose()


def build_app(settings: ProjectorSettings) -> FastStream:
    app = FastStream(make_broker(settings.redis_url))
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    @app.after_startup
    async def begin() -> None:
        log.info("projector.starting", consumer=settings.projector_consumer)
        tasks.append(asyncio.create_task(serve(settings, stop)))

    @app.on_shutdown
    async def end() -> None:
        stop.set()
        for task in tasks:
            # Between two batches the loop sees ``stop`` at once; in the middle of a long
            # catch-up it is cancelled, which is safe anywhere (a kill -9 is too).
            done, _ = await asyncio.wait([task], timeout=_GRACE_S)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("projector.stopped")

    return app
