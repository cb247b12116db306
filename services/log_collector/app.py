"""The log-collector process: a FastStream app over the log's server.

Every instance consumes the event log (group ``log-collector``: failed ranks, finished
attempts) and serves archived lines; the instance holding the ingest lease also copies the
ingest stream and archives. On SIGTERM the batch in hand is finished, the lease released, and
the process exits; after kill -9, everything is redone from what Redis holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from faststream import FastStream
from faststream.redis import ListSub
from faststream.redis.annotations import RedisListMessage
from redis.exceptions import RedisError

from events import keys
from services.core import partitions
from services.core.archive import ArchiveBusy
from services.core.client import connect_with
from services.core.consumer import LogConsumer, make_broker
from services.core.groups import ensure_group
from services.core.lease import Lease
from services.log_collector.archive import Archiver
from services.log_collector.events import EventHandler
from services.log_collector.ingest import Ingester, pause
from services.log_collector.serve import ArchiveServer
from services.log_collector.settings import LogCollectorSettings
from services.output.reading import INGEST_GROUP

log = structlog.get_logger(__name__)


async def _raw(msg: Any, original: Any) -> None:
    """Skip FastStream's body decoding: the handler decodes the request itself."""


class Collector:
    def __init__(self, settings: LogCollectorSettings) -> None:
        self.settings = settings
        self.client = connect_with(settings)
        self.broker = make_broker(settings)
        self.lease = Lease(
            self.client, keys.log_collector_lease(), settings.collector_name, settings.lease_ttl_ms
        )
        self.ingester = Ingester(self.client, settings)
        self.archiver = Archiver(self.client, settings)
        self.server = ArchiveServer(self.client, settings)
        self.consumers = [
            LogConsumer(
                self.broker,
                group=INGEST_GROUP,
                consumer=settings.collector_name,
                handler=(handler := EventHandler(self.client, settings.archive_dir)),
                settings=settings,
                takes=handler.takes,
                partition=partition,
            )
            for partition in range(settings.partitions)
        ]
        self.broker.subscriber(
            list=ListSub(keys.log_requests(), polling_interval=0.2),
            decoder=_raw,
            no_reply=True,
            max_workers=settings.serve_workers,
        )(self._on_request)
        self._stop = asyncio.Event()
        self._leading: asyncio.Task[None] | None = None

    def app(self) -> FastStream:
        return FastStream(
            self.broker,
            logger=None,
            on_startup=[self._prepare],
            after_startup=[self._start],
            on_shutdown=[self._stop_leading],
            after_shutdown=[self._close],
        )

    async def _close(self) -> None:
        await self.client.aclose()

    async def _on_request(self, msg: RedisListMessage) -> None:
        await self.server.handle(msg.body)

    async def _prepare(self) -> None:
        """Before the broker starts: a log of as many partitions as this collector reads, and
        groups at position 0, so nothing written before is skipped."""
        await partitions.check(self.client, self.settings.partitions)
        await ensure_group(self.client, keys.log_ingest(), INGEST_GROUP)
        for consumer in self.consumers:
            await consumer.prepare(self.client)

    async def _start(self) -> None:
        self._leading = asyncio.create_task(self._lead())
        log.info("collector.started", archive_dir=str(self.settings.archive_dir))

    async def _stop_leading(self) -> None:
        self._stop.set()
        if self._leading is not None:
            await self._leading
        with contextlib.suppress(RedisError, OSError):
            await self.lease.release()
        log.info("collector.stopped", lines_stored=self.ingester.stored)

    async def _lead(self) -> None:
        """Hold the ingest lease (or wait for it) and, while held, copy and archive."""
        renew_s = self.settings.lease_ttl_ms / 3000
        while not self._stop.is_set():
            try:
                held = await self.lease.hold()
            except (RedisError, OSError) as exc:
                log.warning("collector.lease_unreachable", error=repr(exc))
                held = False
            if not held:
                await pause(self._stop, renew_s)
                continue
            log.info("collector.active", holder=self.lease.token)
            active = asyncio.Event()  # set: stop copying (lease lost, or shutting down)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self.ingester.run(active))
                    group.create_task(self.archiver.run(active))
                    if self.settings.retain_s is not None:
                        group.create_task(self._retain(active, self.settings.retain_s))
                    await self._keep_lease(active, renew_s)
            except* Exception:  # a bug must not stop the collector for good
                log.exception("collector.crashed")
                await pause(self._stop, 1.0)
            log.info("collector.standby")

    async def _retain(self, active: asyncio.Event, retain_s: float) -> None:
        """Under ``RUNPLANE_RETAIN``, while active: every ``retain_every_s``, archive what of
        the log is older (``services.core.archiver``, as ``mcli admin archive --before`` does).
        A pass that fails is logged and made again at the next; one cut short by a kill is
        finished by the next (the archiver's own guarantee)."""
        from services.core import archiver  # noqa: PLC0415 - only where the log is retained

        assert self.settings.event_archive is not None, "checked by the settings"
        while not active.is_set():
            try:
                done = await archiver.archive_older(
                    self.client,
                    self.settings.event_archive,
                    older_than_s=retain_s,
                    partitions=self.settings.partitions,
                )
                log.info(
                    "collector.retained",
                    events=done.events,
                    runs=done.runs,
                    trimmed=done.trimmed,
                    retired=done.retired,
                    inbox_entries=done.inbox_entries,
                    upto=done.upto,
                    held_by=done.held_by,
                )
            except (RedisError, OSError, archiver.ArchiveMoved, ArchiveBusy) as exc:
                log.warning("collector.retain_failed", error=repr(exc))
            await pause(active, self.settings.retain_every_s)

    async def _keep_lease(self, active: asyncio.Event, renew_s: float) -> None:
        renewed = time.monotonic()
        while True:
            await pause(self._stop, renew_s)
            if self._stop.is_set():
                break
            try:
                if not await self.lease.hold():
                    log.error("collector.lease_lost", holder=self.lease.token)
                    break
                renewed = time.monotonic()
            except (RedisError, OSError) as exc:
                log.warning("collector.lease_unreachable", error=repr(exc))
                if time.monotonic() - renewed > self.settings.lease_ttl_ms / 1000:
                    break  # it may have expired: someone else may hold it now
        active.set()
