"""Consuming the global log with a consumer group, on FastStream.

Invariants:
- The group is created at position 0 before the broker starts (``services.core.groups``): a
  group that FastStream creates itself starts at ``$`` and would skip everything written before.
- An entry is acknowledged only after its handler returned: a consumer killed in between leaves
  it pending, and the reaper of any live consumer of the group claims it once it has been idle
  for ``claim_idle_ms``. (FastStream's ``min_idle_time`` subscriber only claims, it never reads
  new entries, so each consumer runs a reader and a reaper side by side.) Handlers must therefore
  be idempotent: redelivery is normal.
- An entry that cannot be decoded, or whose handler failed ``max_deliveries`` times, goes to the
  group's dead-letter stream with the error and where it came from, and is acknowledged: the
  consumer goes on. A handler that raises anything else leaves the entry pending for a retry.
- Handlers must finish well within ``claim_idle_ms``, or another consumer claims the entry too.
- A consumer that names the event types its handler takes (``takes``) acknowledges an entry of
  any other known type undecoded, as the handler would have done nothing with it; an entry of
  a type no version of runplane wrote is decoded, and so dead-lettered, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, cast

import structlog
from faststream.middlewares import AckPolicy
from faststream.redis import RedisBroker, RedisClusterBroker, StreamSub
from faststream.redis.annotations import RedisStreamMessage
from redis.asyncio import Connection, Redis

from events import codec, keys
from events.codec import Recorded
from events.errors import UndecodableEvent
from events.model import ALL_EVENT_TYPES
from services.core.client import connection_class
from services.core.groups import Delivery, dead_letter, ensure_group
from services.core.settings import Settings, login

log = structlog.get_logger(__name__)

Handler = Callable[[Recorded], Awaitable[None]]


def make_broker(settings: Settings, max_connections: int = 256) -> RedisBroker:
    """A broker on the server (or cluster) ``settings`` name, logged in as their user, that
    logs through the standard logging tree (structlog renders it).

    FastStream's pool fails, rather than waits, past ``max_connections``: keep it well above
    the subscribers and concurrent handlers one process runs.
    """
    url = settings.redis_url
    if settings.redis_cluster:
        return RedisClusterBroker(
            url,
            **login(settings.redis_auth()),  # type: ignore[arg-type]  # redis-py's own keywords
            logger=logging.getLogger("runplane.faststream"),
            # Per node, as in ``services.core.client.connect_cluster``.
            max_connections=max(max_connections, 1024),
            health_check_interval=10,
        )
    return RedisBroker(
        url,
        **login(settings.redis_auth()),  # type: ignore[arg-type]  # redis-py's own keywords
        # FastStream types this as TCP only; redis-py takes any connection class here.
        connection_class=cast("type[Connection]", connection_class(url)),
        logger=logging.getLogger("runplane.faststream"),
        max_connections=max_connections,
        health_check_interval=10,
    )


async def _raw(msg: Any, original: Any) -> None:
    """Skip FastStream's body decoding: handlers read the entry's fields themselves."""


async def _batch(msg: Any, original: Any) -> Any:
    """A batch's body is the raw reply (ids and fields): its handler takes it as its argument,
    not through FastStream's ``Context``, which it resolves in a worker thread each time."""
    return msg.raw_message


class LogConsumer:
    """Feeds every event of one partition's global log (or of ``stream``: a node's inbox, whose
    entries are copies of the log's) to ``handler``, once in effect."""

    def __init__(
        self,
        broker: RedisBroker,
        *,
        group: str,
        consumer: str,
        handler: Handler,
        settings: Settings,
        partition: int = 0,
        stream: str | None = None,
        poll_ms: int = 100,
        batch: int = 100,
        takes: Collection[type] | None = None,
    ) -> None:
        self.broker = broker
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.settings = settings
        self.stream = stream if stream is not None else keys.log_stream(partition)
        self._client: Redis | None = None
        #: Kinds (``k``) of the known event types the handler does not take: passed undecoded.
        self._passed = (
            frozenset()
            if takes is None
            else codec.kinds_of(ALL_EVENT_TYPES) - codec.kinds_of(takes)
        )
        common: dict[str, Any] = {"group": group, "consumer": consumer, "polling_interval": poll_ms}
        options: dict[str, Any] = {
            "decoder": _raw,
            "ack_policy": AckPolicy.REJECT_ON_ERROR,
            "no_reply": True,
        }
        # The reader takes new entries in batches, acknowledged together once every one has
        # been handled (one XACK, one pass through FastStream per batch); the reaper claims
        # what a dead consumer or a failed batch left pending, one entry at a time, counting
        # deliveries.
        broker.subscriber(
            stream=StreamSub(self.stream, batch=True, max_records=batch, **common),
            **(options | {"decoder": _batch}),
        )(self._on_batch)
        broker.subscriber(
            stream=StreamSub(self.stream, min_idle_time=settings.claim_idle_ms, **common),
            **options,
        )(self._on_entry)

    async def prepare(self, client: Redis) -> None:
        """Run before the broker starts; ``client`` also writes the dead letters."""
        self._client = client
        await ensure_group(client, self.stream, self.group)

    async def _on_batch(self, raw: Any) -> None:
        done: list[bytes] = []
        for raw_position, fields in zip(raw["message_ids"], raw["data"], strict=True):
            if fields.get(codec.KIND) in self._passed:
                done.append(raw_position)
                continue
            position = raw_position.decode()
            try:
                recorded = codec.recorded(position, fields)
            except UndecodableEvent as exc:
                await self._dead_letter(position, fields, exc.why)
                done.append(raw_position)
                continue
            try:
                await self.handler(recorded)
            except Exception as exc:
                # Acknowledge what was done; the failed entry and the rest stay pending, and
                # the reaper takes them one by one once they are idle, counting deliveries.
                assert self._client is not None
                if done:
                    await self._client.xack(self.stream, self.group, *done)
                log.warning("consumer.batch_failed", position=position, error=repr(exc))
                raise
            done.append(raw_position)

    async def _on_entry(self, msg: RedisStreamMessage) -> None:
        raw = msg.raw_message
        position = raw["message_ids"][0].decode()
        fields: dict[bytes, bytes] = raw["data"]
        if fields.get(codec.KIND) in self._passed:
            return
        try:
            recorded = codec.recorded(position, fields)
        except UndecodableEvent as exc:
            await self._dead_letter(position, fields, exc.why)
            return
        try:
            await self.handler(recorded)
        except Exception as exc:
            deliveries = await msg.get_delivery_count()
            if deliveries < self.settings.max_deliveries:
                log.warning(
                    "consumer.retry_later",
                    position=position,
                    deliveries=deliveries,
                    error=repr(exc),
                    run=getattr(recorded.event, "run_id", None),
                )
                raise
            await self._dead_letter(position, fields, f"handler failed {deliveries}x: {exc!r}")

    async def _dead_letter(self, position: str, fields: dict[bytes, bytes], why: str) -> None:
        assert self._client is not None, "call prepare() before the broker starts"
        where = Delivery(self.stream, self.group, self.consumer, position)
        await dead_letter(self._client, where, fields, why)
        log.error("consumer.dead_letter", position=position, group=self.group, error=why)
