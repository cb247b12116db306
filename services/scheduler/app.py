"""The scheduler's edge: lease, replay, consume, decide, append. The only IO of the scheduler.

An instance stands by until it holds the lease, then serves: it rebuilds its state by replaying
the log, and runs decision rounds (``decide``) whenever an event arrives or a tick passes, each
on the log as it stands when the round starts (read on from there through the consumer group
``scheduler``). It stops serving and stands by again as soon as it loses the lease (renewal
refused, or an append or a read ``Fenced``).

Invariants:
- Every append carries its partition's fence (``services.scheduler.fences``: the lease token on
  partition 0, the term's claim on the others) and the version the decision was made on: a
  deposed instance writes nothing once its successor claimed the fences, a decision on stale
  state loses the race (the run is reloaded and decided again next round). Its reads of the
  group carry the fence too: a deposed instance takes no entry its successor needs.
- A round's decisions are appended in batches, one round trip each (``EventStore.append_all``),
  each decision still its own append with its own version check and fence; the scheduler
  takes one as done only once the server answered for it (after its fsync, with AOF
  ``always``).
- A successful append is applied to the state at once, before the next round places anything,
  so a GPU is never given twice; the same events coming back through the log are skipped,
  undecoded, by the positions the append answered (by their version where it answered none).
  Before appending a placement its GPUs are checked free once more.
- Decisions are level-triggered (from the state, not from one event), so a restart at any
  moment (kill -9 included) decides again from the replayed state and double-acts nothing.
- Deadlines (heartbeats, max_duration, a drain's) use the server's clock (``TIME``), the
  log's clock.
- Metrics (``services.scheduler.metrics``) count what this instance appended, once each; the
  gauges read the active term's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Collection
from typing import Any

import structlog
from faststream.redis import RedisBroker
from redis.exceptions import RedisError

from events import codec, keys
from events.codec import Recorded
from events.errors import IllegalTransition, UndecodableEvent
from events.lifecycle import copy_state, evolve
from events.model import AnyEvent, AttemptScheduled, NodeEvent, RunEvent, tag_of
from services.core import partitions
from services.core.aio import wait_event
from services.core.archive import parse
from services.core.client import disconnect
from services.core.errors import Fenced, StoreError, VersionConflict
from services.core.groups import Delivery, dead_letter, ensure_group, group_info, text
from services.core.lease import Lease, LeaseLost
from services.core.store import Append, Appended, EventStore, Outcome
from services.scheduler import fences, metrics
from services.scheduler.cluster import Applied, ClusterState
from services.scheduler.decision import Decision
from services.scheduler.round import decide, shared_outage
from services.scheduler.settings import SchedulerSettings

log = structlog.get_logger("runplane.scheduler")
_MISSING = -2  # PTTL of a key that does not exist

GROUP = "scheduler"
#: Appends sent in one round trip, and such round trips in flight at once.
_BATCH = 200
_CONCURRENT_BATCHES = 4
_RETRY_S = 0.5
#: Log entries read in one round trip.
_READ_BATCH = 500


def new_id() -> str:
    return uuid.uuid4().hex


class Scheduler:
    def __init__(self, settings: SchedulerSettings, broker: RedisBroker) -> None:
        self.settings = settings
        self.broker = broker
        self.token = new_id()
        self.store = EventStore.from_settings(settings)
        self.lease = Lease(
            self.store.redis, keys.scheduler_lease(), self.token, settings.lease_ttl_ms
        )
        self.broker_started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Supervise in the background for the lifetime of the FastStream app."""
        self._task = asyncio.create_task(self.supervise(), name="scheduler")
        try:
            yield
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            with contextlib.suppress(RedisError, OSError):
                await self.lease.release()  # a standby takes over now, not after the expiry
            await self.store.close()
            log.info("scheduler.stopped")

    async def supervise(self) -> None:
        """Stand by, serve while holding the lease, stand by again; until cancelled."""
        structlog.contextvars.bind_contextvars(instance=self.token[:8])
        while True:
            await self._stand_by()
            try:
                await Session(self).serve()
            except* (LeaseLost, Fenced) as deposed:
                log.warning("scheduler.deposed", why=repr(deposed.exceptions[0]))
            except* (StoreError, RedisError, OSError) as trouble:
                log.warning("scheduler.store_trouble", error=repr(trouble.exceptions[0]))
                await self._drop_connections()
                await asyncio.sleep(_RETRY_S)
            except* Exception:
                log.exception("scheduler.crashed")
                await asyncio.sleep(_RETRY_S)

    async def _drop_connections(self) -> None:
        """After a server restart every pooled connection is stale: drop them all at once,
        the store's and the broker's, rather than meet them one failed session at a time."""
        with contextlib.suppress(RedisError, OSError):
            await disconnect(self.store.redis)
            if self.broker_started.is_set():
                await disconnect(await self.broker.connect())

    async def _stand_by(self) -> None:
        told = False
        while True:
            try:
                if await self.lease.hold():
                    log.info("scheduler.active")
                    return
                if not told:
                    log.info("scheduler.standby", holder=await self.lease.holder())
                    told = True
            except (RedisError, OSError) as exc:
                log.warning("scheduler.standby_trouble", error=repr(exc))
            await asyncio.sleep(self.settings.lease_ttl_ms / 5000)


class Session:
    """One term as the active instance: its own state, consumers and decision loop."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.settings = scheduler.settings
        self.store = scheduler.store
        self.state = ClusterState()
        self.wake = asyncio.Event()
        #: Set while the decision loop waits for something to happen (``watch``).
        self.idle = asyncio.Event()
        #: Per partition's log, the position of the last entry the group gave this term.
        self.read_to: dict[str, str] = {}
        #: Positions of this term's appends not yet read back from the log (``fold``).
        #: Each partition's log has positions of its own: the same one may be in two.
        self.appended: set[tuple[str, str]] = set()
        self.consumer = f"{self.settings.scheduler_id}-{scheduler.token[:8]}"
        self.fences: fences.Fences | None = None

    async def serve(self) -> None:
        metrics.CLUSTER.state = self.state  # the gauges read the active term's view
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.scheduler.lease.keep())
                # The scheduler is the one user that may load the append function
                # (services.core.acl): the other writers wait for it on a server without it.
                await self.store.load_function()
                await partitions.check(self.store.redis, self.settings.partitions, record=True)
                # Before the replay: what a deposed instance appended is in the log by then.
                self.fences = await fences.claim(
                    self.store.redis, self.scheduler.token, self.settings.partitions
                )
                log.info("scheduler.term", term=self.fences.term)
                await self.rebuild()
                await self.consume(tasks)
                tasks.create_task(self.decide_forever())
        finally:
            if metrics.CLUSTER.state is self.state:
                metrics.CLUSTER.state = None
            await self.stop_consuming()

    # --- the state --------------------------------------------------------------------

    async def rebuild(self) -> None:
        now = await self.server_ms()
        count = 0
        for partition in range(self.settings.partitions):
            async for record in self.store.replay(partition):
                await self.apply(record)
                count += 1
                if count % 10_000 == 0:
                    self.state.drop_settled()
        self.state.drop_settled()
        self.state.active_since = now
        log.info("scheduler.rebuilt", events=count, runs=len(self.state.runs))

    async def apply(self, record: Recorded) -> None:
        applied = self.state.apply(record)
        if applied is Applied.GAP:
            await self.reload(record.event.aggregate)
        elif applied is Applied.REFUSED:
            log.error(
                "scheduler.refused_event",
                position=record.position,
                aggregate=record.event.aggregate,
            )

    async def reload(self, aggregate: str) -> None:
        self.state.reload(aggregate, await self.store.history(aggregate))
        self.wake.set()  # it is dirty again: decide on what the log really holds

    # --- consuming --------------------------------------------------------------------

    async def consume(self, tasks: asyncio.TaskGroup) -> None:
        """Join the group on each partition's log, from where it stands, and watch each."""
        for partition in range(self.settings.partitions):
            stream = keys.log_stream(partition)
            await ensure_group(self.store.redis, stream, GROUP)
            await self.drop_stale_consumers(partition)
            info = await group_info(self.store.redis, stream, GROUP)
            assert info is not None, "ensure_group created it"
            self.read_to[stream] = text(info["last-delivered-id"])
            tasks.create_task(self.watch(stream))

    async def catch_up(self) -> None:
        """Fold every entry of the log the group has not given anyone yet, ``_READ_BATCH``
        at most a round trip. Each round starts with it, so the log is read once a round
        however many events came since the last (reading each as it came, through FastStream's
        subscribers, cost more than folding them, bench.scale). Read with ``NOACK``: nothing
        stays pending, as nothing needs to, since each term replays the log; a failure ends
        the term. Read behind the partition's fence, as the appends are: an instance deposed
        without knowing it yet takes nothing from the group (``Fenced`` tells it), so its
        successor is given every entry."""
        assert self.fences is not None, "claimed before consuming"
        for partition in range(self.settings.partitions):
            stream, fence = keys.log_stream(partition), self.fences.fences[partition]
            while True:
                entries = await self.store.read_fenced(
                    stream, GROUP, self.consumer, _READ_BATCH, fence
                )
                if not entries:
                    break
                self.read_to[stream] = entries[-1][0].decode()
                await self.fold(stream, entries)
                if len(entries) < _READ_BATCH:
                    break

    async def watch(self, stream: str) -> None:
        """While the decision loop waits (``idle``), wake it as soon as ``stream`` holds an
        entry past what the term read. An ``XREAD``, which takes nothing from the group: the
        round reads it (``catch_up``), and a watch left waiting meanwhile is in nobody's way."""
        redis = self.store.redis
        while True:
            await self.idle.wait()
            reply: Any = await redis.xread(
                {stream: self.read_to[stream]}, count=1, block=self.settings.tick_ms
            )
            if not reply or not self.idle.is_set():
                continue
            [[_, [[position, _]]]] = reply
            if parse(position.decode()) > parse(self.read_to[stream]):  # not read meanwhile
                self.idle.clear()
                self.wake.set()

    async def fold(self, stream: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Apply a batch read from ``stream``, an entry that cannot be decoded dead-lettered."""
        for raw_position, fields in entries:
            position = raw_position.decode()
            if (stream, position) in self.appended:  # in the state since it was appended
                self.appended.remove((stream, position))
                continue
            try:
                record = codec.recorded(position, fields)
            except UndecodableEvent as exc:
                why = exc.why
            else:
                await self.apply(record)
                continue
            where = Delivery(stream, GROUP, self.consumer, position)
            await dead_letter(self.store.redis, where, fields, why)
            log.error("scheduler.dead_letter", position=position, error=why)

    async def drop_stale_consumers(self, partition: int) -> None:
        """Forget the group's other consumers (instances that died): only the lease holder
        consumes, and it replayed the log, so their pending entries need no claiming."""
        stream = keys.log_stream(partition)
        for info in await self.store.redis.xinfo_consumers(stream, GROUP):
            if (name := text(info["name"])) != self.consumer:
                await self.store.redis.xgroup_delconsumer(stream, GROUP, name)

    async def stop_consuming(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            for partition in range(self.settings.partitions):
                # Its pending entries need no claim: the next term replays the log anyway.
                await self.store.redis.xgroup_delconsumer(
                    keys.log_stream(partition), GROUP, self.consumer
                )

    # --- deciding ---------------------------------------------------------------------

    async def decide_forever(self) -> None:
        tick_s = self.settings.tick_ms / 1000
        # Heartbeats are looked at a fifth of the node timeout apart, not every tick: one
        # EXISTS per node each time (61 ms of CPU at 5,000 nodes, bench.scale), and a loss is
        # still declared within 1.2 timeouts.
        watch_ms = max(self.settings.tick_ms, int(self.settings.node_timeout_s * 1000) // 5)
        next_watch = 0
        pace_s = self.settings.round_min_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            self.wake.clear()
            started = loop.time()
            await self.catch_up()
            now = await self.server_ms()
            silent: Collection[str] = ()
            watched = quiet = 0
            if now >= next_watch:
                silent, quiet, watched = await self.silent_nodes(now)
                next_watch = now + watch_ms
                if silent and shared_outage(quiet, watched, self.settings.silent_share):
                    log.warning(
                        "scheduler.shared_silence", silent=len(silent), quiet=quiet, watched=watched
                    )
            decisions = decide(
                self.state,
                now,
                new_id,
                actor=self.settings.scheduler_id,
                silent=silent,
                watched=watched,
                quiet=quiet,
                silent_share=self.settings.silent_share,
            )
            self.state.clear_dirty()
            progressed = await self.execute(decisions) if decisions else False
            self.state.drop_settled()
            if not progressed:
                self.idle.set()
                await wait_event(self.wake, tick_s)
                self.idle.clear()
            if (rest := pace_s - (loop.time() - started)) > 0:
                await asyncio.sleep(rest)  # what arrives meanwhile is decided together

    async def silent_nodes(self, now: int) -> tuple[frozenset[str], int, int]:
        """The watched nodes whose heartbeat key is missing; how many are quiet (missing, or
        with less than half the node timeout left: not renewed for a while); how many were
        watched. A beating node's key has at least 3/4 of its expiry left (four beats an
        expiry), so "quiet" takes in the nodes that stopped beating with the silent ones.
        Only the keys not sure to last half the node timeout more are asked about (``PTTL``,
        one round trip): the others are there and not quiet."""
        timeout_ms = int(self.settings.node_timeout_s * 1000)
        names = self.state.watched_nodes(now, timeout_ms)
        if not names:
            return frozenset(), 0, 0
        asked = self.state.unsure(names, now + timeout_ms // 2)
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for name in asked:
                pipe.pttl(keys.heartbeat(name))
            left: dict[str, int] = dict(zip(asked, await pipe.execute(), strict=True))
        silent = frozenset(name for name, ms in left.items() if ms == _MISSING)
        self.state.saw(
            [(name, left.get(name)) for name in names if left.get(name) != _MISSING], now
        )
        quiet = sum(ms == _MISSING or 0 <= ms < timeout_ms // 2 for ms in left.values())
        return silent, quiet, len(names)

    async def execute(self, decisions: list[Decision]) -> bool:
        """Append every decision still valid, ``_BATCH`` at a time in one round trip each
        (``EventStore.append_all``: each still its own append, with its own version check and
        fence), then apply what landed; True if any did. A conflict reloads its aggregate (it
        is decided again next round), a fence refused ends the term (``Fenced``)."""
        valid = [decision for decision in decisions if self.still_valid(decision)]
        assert self.fences is not None, "serve() claims the fences first"
        fence = self.fences.of
        batches = [valid[start : start + _BATCH] for start in range(0, len(valid), _BATCH)]
        limit = asyncio.Semaphore(_CONCURRENT_BATCHES)

        async def send(batch: list[Decision]) -> list[Outcome]:
            async with limit:
                return await self.store.append_all(
                    [Append(d.events, d.expected_version, fence(d.aggregate)) for d in batch]
                )

        async with asyncio.TaskGroup() as tasks:
            sent = [tasks.create_task(send(batch)) for batch in batches]
        stored: Counter[str] = Counter()
        conflicts = 0
        fenced: Fenced | None = None
        for batch, task in zip(batches, sent, strict=True):
            for decision, outcome in zip(batch, task.result(), strict=True):
                if isinstance(outcome, Fenced):
                    fenced = fenced or outcome
                elif isinstance(outcome, VersionConflict):
                    conflicts += 1
                    await self.reload(decision.aggregate)  # somebody else wrote: decide again
                else:
                    await self.applied(decision, outcome)
                    stored.update(tag_of(type(event)) for event in decision.events)
        if stored or conflicts:
            # One line a round; each event on its own at debug (the log holds them all).
            log.info("scheduler.appended", events=dict(stored), conflicts=conflicts)
        if fenced is not None:
            raise fenced
        return bool(stored)

    async def applied(self, decision: Decision, appended: Appended) -> None:
        """Fold what an append stored into the state, at once (the same events coming back
        through the log are skipped by their positions)."""
        if appended.version is None:  # a retried append that had landed: read what it wrote
            await self.reload(decision.aggregate)
            return
        stream = keys.log_stream(keys.partition_of(decision.aggregate, self.settings.partitions))
        self.appended.update((stream, position) for position in appended.positions)
        first = appended.version - len(decision.events) + 1
        for offset, (position, event) in enumerate(
            zip(appended.positions, decision.events, strict=True)
        ):
            event.time = int(position.split("-", 1)[0])
            if self.state.apply(Recorded(position, first + offset, event)) is Applied.GAP:
                await self.reload(decision.aggregate)
                break
        if log.is_enabled_for(logging.DEBUG):
            for event in decision.events:
                _log_event(event)
        metrics.appended(decision.events, self.state)

    def still_valid(self, decision: Decision) -> bool:
        """The state did not move since the decision, the rules accept it, its GPUs are free."""
        if decision.expected_version != self.state.known_version(decision.aggregate):
            return False
        run_id = decision.run_id
        if run_id is None:
            return True
        run = self.state.runs.get(run_id)
        if run is None:
            return False
        after = copy_state(run)
        try:
            for event in decision.events:
                if isinstance(event, RunEvent):
                    evolve(after, event)
        except IllegalTransition as exc:
            log.exception("scheduler.illegal_decision", run=run_id, error=str(exc))
            return False
        for event in decision.events:
            if isinstance(event, AttemptScheduled):
                for rank in event.ranks:
                    used = self.state.used.get(rank.node, {})
                    if taken := [gpu for gpu in rank.gpus if gpu in used]:
                        log.error("scheduler.gpu_taken", run=run_id, node=rank.node, gpus=taken)
                        return False
        return True

    async def server_ms(self) -> int:
        seconds, micros = await self.store.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000


def _log_event(event: AnyEvent) -> None:
    fields: dict[str, Any] = {"type": tag_of(type(event))}
    if isinstance(event, NodeEvent):
        fields["node"] = event.node
    elif isinstance(event, RunEvent):
        fields.update(run=event.run_id, attempt=event.attempt)
    else:
        fields["user"] = event.user
    for name in ("reason", "position", "cause", "exit_code"):
        if (value := getattr(event, name, None)) is not None:
            fields[name] = str(value) if name == "reason" else value
    if isinstance(event, AttemptScheduled):
        fields["ranks"] = [f"{r.rank}:{r.node}:{','.join(map(str, r.gpus))}" for r in event.ranks]
    log.debug("scheduler.appended_event", **fields)
