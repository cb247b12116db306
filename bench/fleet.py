"""A fleet of node-agents in one process, for the scale bench: the real agent code, no processes.

Each simulated node is a real ``services.node_agent.app.NodeAgent``: its fold of the log, its
``plan`` and its ``Reporter``, so every report is read, decided and appended through
``EventStore.update_run`` and checked against the lifecycle rules, as on a real node. Two
things are replaced:

- the executor. ``SimulatedExecutor`` does what the process executor does for a rank whose
  image reference is valid and that has no integrations: ``image.pull_started``,
  ``image.pull_finished``, ``rank.running``, then ``rank.exited`` with code 0 after a short
  simulated runtime. A stop (the attempt is terminating with a reason) ends setup or the
  command and reports the exit with the attempt's reason, as a SIGTERM'd command is reported;
  a kill (the log says the rank is over) reports nothing. No process runs, no output is written.
- the reading of the log. A real agent reads its own inbox (``events.keys.inbox``) through a
  consumer group of its own (``agent:<node>``); here one reader reads the global log once and
  hands each entry, in log order, to the agents it concerns (the nodes of the run's
  placements, a node its own events). Each agent handles its entries one at a time in a task
  of its own, as its consumer would, so agents work concurrently and each sees its runs'
  events in order. This simulates what the agents do, not how their events reach them: the
  appends do copy each event into the inboxes (``events.inbox``), so the server pays for
  the copies, but nothing reads them; what the deliveries would cost, ``bench.scale``
  measures and estimates.

Heartbeats: one task renews every node's key (``keys.heartbeat``) at the agent's interval, in
pipelines: the server sees the same writes, the client shares the round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis

from bench.placement import CLUSTER
from events import codec, keys
from events.codec import Recorded
from events.lifecycle import AttemptState, RankState
from events.model import (
    AnyRunEvent,
    AttemptCompleted,
    AttemptFailed,
    AttemptScheduled,
    AttemptStopped,
    Event,
    ImagePullFinished,
    ImagePullStarted,
    NodeEvent,
    RankRunning,
    RestartRequested,
    RetryScheduled,
    RunEvent,
)
from events.status import RunStatus
from services.core.settings import Settings
from services.core.store import Appended, EventStore, Fence
from services.node_agent.app import NodeAgent
from services.node_agent.errors import RankEnded, RankGone, SetupAborted
from services.node_agent.executor import RankControl
from services.node_agent.job import RankJob, RankKey
from services.node_agent.plan import exited, stop_reason
from services.node_agent.reporter import Reporter, new_id
from services.node_agent.settings import NodeAgentSettings

_READ_COUNT = 1000
_PIPELINE = 1000  # heartbeats per pipeline
_REGISTERING = 64  # registrations in flight
_Reply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


class SimulatedExecutor:
    """``services.node_agent.executor.Executor`` without processes: setup and the command are
    reported as the process executor reports them, the command "runs" ``runtime_s()`` seconds."""

    def __init__(
        self,
        reporter: Reporter,
        runtime_s: Callable[[], float],
        failed: Callable[[BaseException], None],
    ) -> None:
        self.reporter = reporter
        self.runtime_s = runtime_s
        self.failed = failed  # a rank that fails here would leave its run waiting forever
        self.begun: set[RankKey] = set()

    async def prepare(self) -> None:
        """Nothing to learn: a simulated node starts empty."""

    def isolation(self) -> str:
        return "none (simulated ranks)"

    def close(self) -> None:
        """Nothing to let go of."""

    def local_ranks(self) -> list[RankKey]:
        return sorted(self.begun)

    def begin(self, key: RankKey) -> None:
        self.begun.add(key)

    async def run(
        self, key: RankKey, job: RankJob | None, control: RankControl, *, resume: bool
    ) -> None:
        try:
            await self._setup(key, job, control)
            await self._command(key, control)
        except (RankEnded, RankGone):
            pass  # its exit was reported, or the log says it is over: nothing more to say
        except Exception as exc:
            self.failed(exc)
            raise
        finally:
            self.begun.discard(key)

    async def _setup(self, key: RankKey, job: RankJob | None, control: RankControl) -> None:
        """As ``services.node_agent.process.setup.Setup`` for a valid image and no integrations."""
        if job is None:
            raise RankGone("the log no longer describes the rank")
        for step in (ImagePullStarted, ImagePullFinished):
            if control.killed:
                raise RankGone("the log says the rank is over")
            reason = control.stop_reason
            if reason is None:
                try:
                    await self._report(key, step(**self.reporter.fields(key), image=job.spec.image))
                    continue
                except SetupAborted as aborted:
                    reason = aborted.reason
            # A stop during setup: the rank's exit, with the attempt's reason, ends it.
            node, actor = self.reporter.node, self.reporter.actor
            gone = exited(key, node, actor, new_id, exit_code=None, reason=reason)
            await self._report(key, gone, setup=False)
            raise RankEnded

    async def _report(self, key: RankKey, event: AnyRunEvent, *, setup: bool = True) -> None:
        await self.reporter.report(key, lambda _a, _r: [event], setup=setup)

    async def _command(self, key: RankKey, control: RankControl) -> None:
        running = RankRunning(**self.reporter.fields(key), pid=4242)
        await self.reporter.report(key, lambda _a, rank: [] if rank.running else [running])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.runtime_s()):
                while not control.stopping:
                    await control.changed.wait()
                    control.changed.clear()
        if control.killed:
            return
        stopped = control.stop_reason is not None
        gone_id = new_id()  # the same id on every try: a retried append is recognised

        def build(attempt: AttemptState, _rank: RankState) -> list[AnyRunEvent]:
            # As the process executor reports a command that exited 0, or that SIGTERM ended
            # because it was told to stop: with the attempt's reason.
            reason = (stop_reason(attempt) or control.stop_reason) if stopped else None
            gone = exited(
                key, self.reporter.node, self.reporter.actor, lambda: gone_id,
                exit_code=None if stopped else 0,
                signal=int(signal.SIGTERM) if stopped else None, reason=reason,
            )  # fmt: skip
            return [gone]

        await self.reporter.report(key, build)


class SharedStore(EventStore):
    """The one store of the whole fleet: at most ``limit`` reads and appends in flight, the
    others wait their turn here. Real agents have a connection pool each; thousands of tasks
    waiting on one pool instead would fail after its timeout, and waking them there costs
    time in proportion to how many wait."""

    def __init__(self, client: aioredis.Redis, settings: Settings, limit: int) -> None:
        super().__init__(client, settings)
        self._limit = asyncio.Semaphore(limit)

    async def history(self, aggregate: str) -> list[Recorded]:
        async with self._limit:
            return await super().history(aggregate)

    # The store's own signature, repeated on purpose: this wrapper only waits for a turn.
    async def append(
        self,
        events: Sequence[Event],
        *,
        expected_version: int | None,
        idempotency_key: str | None = None,
        fence: Fence | None = None,
        retry_for_s: float = 30.0,
    ) -> Appended:
        async with self._limit:
            return await super().append(
                events,
                expected_version=expected_version,
                idempotency_key=idempotency_key,
                fence=fence,
                retry_for_s=retry_for_s,
            )


class Fleet:
    """``nodes`` simulated node-agents of ``gpus`` GPUs each, named ``node-00000`` on."""

    def __init__(
        self,
        store: SharedStore,
        *,
        nodes: int,
        gpus: int,
        gpu_type: str,
        runtime_s: Callable[[], float],
        heartbeat_interval_s: float = 2.0,
        heartbeat_ttl_s: float = 10.0,
    ) -> None:
        self.store = store
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.agents: dict[str, NodeAgent] = {}
        for index in range(nodes):
            settings = NodeAgentSettings(
                redis_url=store.settings.redis_url,
                partitions=1,
                node=f"node-{index:05d}",
                cluster=CLUSTER,
                gpus=gpus,
                gpu_type=gpu_type,
                cpus=64,
                data_dir=Path("/nonexistent/runplane-bench"),  # never touched: no executor IO
                heartbeat_interval_s=heartbeat_interval_s,
                heartbeat_ttl_s=heartbeat_ttl_s,
            )
            agent = NodeAgent(settings, store)
            agent.executor = SimulatedExecutor(agent.reporter, runtime_s, self._failed)
            self.agents[settings.node] = agent
        self.inbox: dict[str, asyncio.Queue[Recorded]] = {n: asyncio.Queue() for n in self.agents}
        #: run id -> the nodes any of its attempts was placed on: who reads its events.
        self.routes: dict[str, set[str]] = {}
        #: run id -> how its latest attempt ended, while no retry or restart followed.
        self.ended: dict[str, RunStatus] = {}
        self.read = 0  # entries read from the log
        self.expected: int | None = None
        self.all_ended = asyncio.Event()
        self.errors: list[BaseException] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def register(self) -> None:
        """Heartbeat keys first (a registered node without one would be declared lost), then
        ``node.registered`` of every node, as each agent appends it at start."""
        await self.beat_once()
        limit = asyncio.Semaphore(_REGISTERING)

        async def one(agent: NodeAgent) -> None:
            async with limit:
                await agent.register()

        await asyncio.gather(*(one(agent) for agent in self.agents.values()))

    async def __aenter__(self) -> Fleet:
        self._tasks.append(asyncio.create_task(self._beat(), name="fleet:heartbeat"))
        self._tasks.append(asyncio.create_task(self._read(), name="fleet:reader"))
        for name, agent in self.agents.items():
            task = asyncio.create_task(self._work(agent, self.inbox[name]), name=f"agent:{name}")
            self._tasks.append(task)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(agent.stop() for agent in self.agents.values()))

    # --- heartbeats -------------------------------------------------------------------

    async def _beat(self) -> None:
        every_s = min(self.heartbeat_interval_s, self.heartbeat_ttl_s / 4)  # as the agent does
        while True:
            await asyncio.sleep(every_s)
            await self.beat_once()

    async def beat_once(self) -> None:
        ttl_ms = int(self.heartbeat_ttl_s * 1000)
        now_ms = int(time.time() * 1000)
        names = list(self.agents)
        for start in range(0, len(names), _PIPELINE):
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for name in names[start : start + _PIPELINE]:
                    pipe.set(keys.heartbeat(name), now_ms, px=ttl_ms)
                await pipe.execute()

    # --- the log ----------------------------------------------------------------------

    async def _read(self) -> None:
        stream = keys.log_stream(0)
        last = "0"
        try:
            while True:
                reply = cast(
                    _Reply,
                    await self.store.redis.xread({stream: last}, count=_READ_COUNT, block=100),
                )
                entries = reply[0][1] if reply else []
                for raw_position, fields in entries:
                    last = raw_position.decode()
                    self._route(codec.recorded(last, fields))
                # Fewer than asked: the log's end, and an append is all there or not at all, so
                # no run is caught between its attempt's end and the retry appended with it.
                if len(entries) < _READ_COUNT and self._done():
                    self.all_ended.set()
        except Exception as exc:
            self._failed(exc)
            raise

    def _route(self, record: Recorded) -> None:
        self.read += 1
        event = record.event
        if isinstance(event, NodeEvent):
            if (inbox := self.inbox.get(event.node)) is not None:
                inbox.put_nowait(record)
            return
        if not isinstance(event, RunEvent):
            return
        if isinstance(event, AttemptScheduled):
            self.routes.setdefault(event.run_id, set()).update(r.node for r in event.ranks)
        for node in self.routes.get(event.run_id, ()):
            self.inbox[node].put_nowait(record)
        match event:
            case AttemptCompleted():
                self.ended[event.run_id] = RunStatus.COMPLETED
            case AttemptStopped():
                self.ended[event.run_id] = RunStatus.STOPPED
            case AttemptFailed():
                self.ended[event.run_id] = RunStatus.FAILED
            case RetryScheduled() | RestartRequested():
                self.ended.pop(event.run_id, None)
            case _:
                pass

    def _done(self) -> bool:
        return self.expected is not None and len(self.ended) >= self.expected

    async def _work(self, agent: NodeAgent, inbox: asyncio.Queue[Recorded]) -> None:
        while True:
            record = await inbox.get()
            try:
                await agent.on_record(record)
            except Exception as exc:
                self._failed(exc)
                raise

    def _failed(self, exc: BaseException) -> None:
        print(f"fleet: {exc!r}", file=sys.stderr, flush=True)
        self.errors.append(exc)
        self.all_ended.set()  # wake whoever waits: it must look at the errors
