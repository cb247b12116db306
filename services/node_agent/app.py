"""The node-agent process: registers its node, heartbeats, and runs the ranks placed on it.

Invariants:
- The heartbeat key (``keys.heartbeat(node)``) is renewed every ``heartbeat_interval_s`` with
  an expiry of ``heartbeat_ttl_s``; ``node.registered`` is appended at every start, and again
  when the log says the node was lost while this agent lives (it was partitioned away).
- The agent reads its node's inboxes (``keys.inbox``, one per partition), never the global log:
  copies of the log's entries for the runs placed on this node and for the node itself
  (``events.inbox``), so its work grows with its own runs, not with the fleet. Runs are folded
  from them with the lifecycle rules, each event applied once by the aggregate version the log
  stamped on it; a gap (or an event the fold refuses) reloads the run's history. Only runs
  with a rank placed on this node are kept.
- At start, for each run with ranks on disk, the agent puts its node among the run's told
  nodes before it reads the run's history, so nothing appended after that read is missed.
- Every decision comes from ``plan`` over the folded state; a rank is recorded on disk
  (``Executor.begin``) before the entry that placed it is acknowledged, so after a kill -9 it
  is either redelivered or found on disk (``reconcile``), never forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any, assert_never, cast

import structlog
from faststream import FastStream
from redis.exceptions import RedisError

from events import codec, keys, nodes
from events.codec import Order, Recorded
from events.errors import IllegalTransition, UndecodableEvent
from events.lifecycle import RunState, evolve
from events.model import (
    AttemptScheduled,
    NodeEvent,
    NodeGpuFailed,
    NodeLost,
    NodeRegistered,
    Reason,
    RunEvent,
    run_aggregate,
)
from services.core.archive import ArchiveMissing
from services.core.consumer import LogConsumer, make_broker
from services.core.errors import VersionConflict
from services.core.metrics import serve as serve_metrics
from services.core.sealing import KeyringFile
from services.core.secretstore import SecretValues
from services.core.store import EventStore
from services.node_agent.errors import RankGone
from services.node_agent.executor import Executor, RankControl
from services.node_agent.gpuhealth import GpuFault, GpuWatcher
from services.node_agent.healthcheck import keep_checking
from services.node_agent.job import RankJob, RankKey, job_of
from services.node_agent.plan import Kill, Release, Start, Stop, exited, plan
from services.node_agent.process.executor import ProcessExecutor
from services.node_agent.reporter import Reporter, new_id
from services.node_agent.settings import NodeAgentSettings
from services.node_agent.shim import lease
from services.node_agent.telemetry import Sampler, Telemetry

log = structlog.get_logger(__name__)

_Entries = list[tuple[bytes, dict[bytes, bytes]]]
_STOP_S = 5.0  # a task swallowing its cancellation (a client's retry) must not hang shutdown


class NodeAgent:
    def __init__(self, settings: NodeAgentSettings, store: EventStore) -> None:
        self.settings = settings
        self.node = settings.node
        self.store = store
        self.reporter = Reporter(store, settings.node, settings.actor)
        self.executor = make_executor(settings, self.reporter, store)
        self.runs: dict[str, RunState] = {}
        self.reporter.known = self.runs.get
        self.ranks: dict[RankKey, RankControl] = {}
        self.tasks: dict[RankKey, asyncio.Task[None]] = {}
        self.registered_at: tuple[int, int] | None = None
        self._lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self._watcher: GpuWatcher | None = None
        self._health: list[asyncio.Task[None]] = []
        self.telemetry = Telemetry(settings.node, settings.uuids, settings.gpu_type or "")
        self._sampler: Sampler | None = None
        self._metrics: asyncio.Server | None = None
        self.health_failures: list[str] = []  # the health check's failures, newest last
        #: The GPU failures this agent put on the log: said again after a registration, which
        #: makes the scheduler forget them (the watcher reports each GPU once).
        self.gpu_faults: list[GpuFault] = []
        self._faults: asyncio.Queue[GpuFault] = asyncio.Queue()

    # --- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Heartbeat, register, and pick up the ranks found on disk; before consuming."""
        self.settings.data_path.mkdir(parents=True, exist_ok=True)
        await self._beat_once()
        self._heartbeat = asyncio.create_task(self._beat(), name="heartbeat")
        await self.register()
        if self.settings.physical_gpus:
            self._watch_gpus()
            self._sample_gpus()
        if (command := self.settings.health_check_command) is not None:
            checking = keep_checking(
                command,
                self.settings.health_check_interval_s,
                self.settings.health_check_timeout_s,
                self.health_check_failed,
            )
            self._health.append(asyncio.create_task(checking, name="health-check"))
        if self.settings.metrics_port is not None:
            self._metrics = await serve_metrics(
                self.settings.metrics_host, self.settings.metrics_port, self.telemetry.exposition
            )  # the process's metrics, then the GPUs' gauges
        await self.executor.prepare()
        await self.reconcile()

    async def stop(self) -> None:
        """Stop watching; the ranks' shims run on and a restarted agent adopts them."""
        self.executor.close()
        if self._watcher is not None:
            self._watcher.stopping.set()
        if self._sampler is not None:
            self._sampler.stopping.set()
        if self._metrics is not None:
            self._metrics.close()
        tasks = {*self.tasks.values(), *([self._heartbeat] if self._heartbeat else [])}
        tasks.update(self._health)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=_STOP_S)
            if stuck:
                log.warning("agent.stop_timeout", tasks=sorted(t.get_name() for t in stuck))

    async def register(self) -> None:
        settings = self.settings
        event = NodeRegistered(
            id=new_id(),
            actor=settings.actor,
            node=settings.node,
            cluster=settings.cluster,
            gpu_type=settings.gpu_type,
            gpus=settings.gpu_count,
            cpus=settings.cpus,
            gpu_uuids=settings.uuids,
            isolation=self.executor.isolation(),
        )
        appended = await self.store.append([event], expected_version=None)
        self.registered_at = _position(appended.positions[0])
        log.info("node.registered", gpus=event.gpus, gpu_type=event.gpu_type, cluster=event.cluster)

    # --- GPU health ---------------------------------------------------------------------

    def _watch_gpus(self) -> None:
        """NVML's watcher in a thread (its calls block); each fault it sees becomes one
        ``node.gpu_failed`` on the log, which the scheduler acts on."""
        loop = asyncio.get_running_loop()
        faults = self._faults
        watcher = self._watcher = GpuWatcher(self.settings.uuids, self.settings.gpu_health_poll_s)

        def report(fault: GpuFault) -> None:
            loop.call_soon_threadsafe(faults.put_nowait, fault)

        async def append() -> None:
            while True:
                fault = await faults.get()
                event = NodeGpuFailed(
                    id=new_id(),
                    actor=self.settings.actor,
                    node=self.node,
                    cluster=self.settings.cluster,
                    gpu=fault.gpu,
                    gpu_uuid=fault.uuid,
                    error=fault.error,
                )
                log.warning("node.gpu_failed", gpu=fault.gpu, uuid=fault.uuid, error=fault.error)
                while True:
                    try:
                        await self.store.append([event], expected_version=None)
                        if fault not in self.gpu_faults:
                            self.gpu_faults.append(fault)
                        break
                    except RedisError:
                        log.warning("node.gpu_failed_unsaved", gpu=fault.gpu, exc_info=True)
                        await asyncio.sleep(self.settings.beat_every_s)

        self._health = [
            asyncio.create_task(asyncio.to_thread(watcher.run, report), name="gpu-watcher"),
            asyncio.create_task(append(), name="gpu-failures"),
        ]

    async def health_check_failed(self, reason: str) -> None:
        """The node's health check failed: the node is cordoned with ``reason`` (as an admin's
        ``mcli admin nodes cordon`` does: nothing new is placed here, what runs runs on; an
        admin uncordons it once it is fixed). Decided on the node's own history by
        ``events.nodes`` and appended on its version."""
        self.health_failures.append(reason)
        log.error("node.health_check_failed", reason=reason)
        aggregate = f"node:{self.settings.node}"
        for _ in range(10):
            history = await self.store.history(aggregate)
            state = nodes.fold(
                self.settings.node, [r.event for r in history if isinstance(r.event, NodeEvent)]
            )
            event = nodes.decide(
                state, "cordon", actor=self.settings.actor, event_id=new_id(), reason=reason
            )
            try:
                await self.store.append([event], expected_version=state.version)
            except VersionConflict:
                continue
            return

    def _sample_gpus(self) -> None:
        """NVML's samples in a thread; each rank's summary goes on its ``rank.exited``."""
        sampler = self._sampler = Sampler(self.telemetry, self.settings.gpu_sample_interval_s)
        self.reporter.usage = self.telemetry.finish
        self._health.append(asyncio.create_task(asyncio.to_thread(sampler.run), name="sampler"))

    async def _beat(self) -> None:
        """Beats at a fixed rate: a slow or failed beat must not delay the next one (the lease
        would age by the wait)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at = max(next_at + self.settings.beat_every_s, loop.time())
            await asyncio.sleep(next_at - loop.time())
            await self._beat_once()

    async def _beat_once(self) -> None:
        """Renew the heartbeat key and the node's fence lease (``shim.lease``). With
        ``fence_on_disconnect``, the lease only after the key, with the time taken before the
        key was sent: never younger than the key. Without it, the lease at every beat, Valkey
        or not (docs/fencing.md)."""
        settings = self.settings
        ttl_ms = int(settings.heartbeat_ttl_s * 1000)
        began = lease.now()
        if not settings.fence_on_disconnect:
            # The lease stands for "this agent's loop runs", whatever Valkey does.
            lease.renew(settings.lease_path, began)
        try:
            await asyncio.wait_for(
                self.store.redis.set(keys.heartbeat(self.node), int(time.time() * 1000), px=ttl_ms),
                timeout=settings.beat_every_s / 2,
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("heartbeat.failed", error=repr(exc))
            return
        if settings.fence_on_disconnect:
            lease.renew(settings.lease_path, began)

    async def reconcile(self) -> None:
        """Resume every rank found on disk, then act on what the log says of its run."""
        by_run: dict[str, list[RankKey]] = defaultdict(list)
        for key in self.executor.local_ranks():
            by_run[key.run_id].append(key)
        async with self._lock:
            for run_id, run_keys in by_run.items():
                try:
                    state = await self._tell_me(run_id)
                except ArchiveMissing as exc:
                    # Only a run at rest goes to the archive, and this node cannot read it:
                    # its ranks here are long over; left on disk as they are.
                    log.warning(
                        "rank.run_archived", run=run_id, ranks=len(run_keys), error=str(exc)
                    )
                    continue
                for key in run_keys:
                    log.info("rank.found", rank=str(key))
                    self._launch(key, _job(state, key), resume=True)
                if state is not None:
                    self.runs[run_id] = state
                    self._act(state)

    async def _tell_me(self, run_id: str) -> RunState | None:
        """The run's state, once this node is among its told nodes (``events.inbox``) while it
        goes on: what a previous life of this agent was told may not be told again (an inbox
        trimmed, a log from before the inboxes)."""
        state = await self.store.load_run(run_id)
        if state is None or state.latest.status.is_terminal():
            return state
        await self.store.tell(run_aggregate(run_id), self.node)
        return await self.store.load_run(run_id)  # with what was appended before the SADD

    # --- the log ----------------------------------------------------------------------

    async def replay_pending(self, stream: str, group: str, consumer: str) -> None:
        """Handle now the entries a previous life of this agent read and did not acknowledge
        (killed in between): the group would redeliver them only once they count as idle.
        Handling is idempotent, so their redelivery later changes nothing."""
        pending = await self.store.redis.xpending_range(
            stream, group, min="-", max="+", count=10_000, consumername=consumer
        )
        for entry in pending:
            position = entry["message_id"]
            xrange = self.store.redis.execute_command
            reply = await xrange("XRANGE", stream, position, position)  # type: ignore[no-untyped-call]
            for raw_position, fields in cast(_Entries, reply):
                try:
                    record = codec.recorded(raw_position.decode(), fields)
                except UndecodableEvent:
                    continue  # the consumer dead-letters it
                log.info("log.replay_pending", position=record.position)
                await self.on_record(record)

    async def on_record(self, record: Recorded) -> None:
        event = record.event
        if isinstance(event, NodeEvent):
            if isinstance(event, NodeLost) and event.node == self.node:
                await self._on_lost(record)
            return
        if not isinstance(event, RunEvent):
            return  # users and keys: no concern of a node
        async with self._lock:
            state = await self._fold(record)
            if state is not None:
                self._act(state)
                self._forget_if_finished(state)

    async def _fold(self, record: Recorded) -> RunState | None:
        """The run's state with ``record`` applied once; None for a run of no concern."""
        event = record.event
        assert isinstance(event, RunEvent)
        known = self.runs.get(event.run_id)
        if known is None:
            placed_here = isinstance(event, AttemptScheduled) and any(
                rank.node == self.node for rank in event.ranks
            )
            return await self._reload(event.run_id) if placed_here else None
        match codec.order(record.version, known.version):
            case Order.SEEN:
                return None
            case Order.NEXT:
                try:
                    return evolve(known, event)
                except IllegalTransition:
                    log.warning("fold.refused", run=event.run_id, position=record.position)
        return await self._reload(event.run_id)

    async def _reload(self, run_id: str) -> RunState | None:
        state = await self.store.load_run(run_id)
        if state is None:
            self.runs.pop(run_id, None)
        else:
            self.runs[run_id] = state
        return state

    async def _on_lost(self, record: Recorded) -> None:
        if self.registered_at is None or _position(record.position) < self.registered_at:
            return  # a loss from before this agent registered: that registration answered it
        log.warning("node.lost_while_alive", position=record.position)
        await self.register()
        for fault in self.gpu_faults:  # a registration clears them: its GPUs are still failed
            self._faults.put_nowait(fault)

    def _forget_if_finished(self, state: RunState) -> None:
        if not state.latest.status.is_terminal():
            return
        if any(key.run_id == state.run_id for key in self.tasks):
            return
        self.runs.pop(state.run_id, None)
        for key in [key for key in self.ranks if key.run_id == state.run_id]:
            del self.ranks[key]

    # --- acting -----------------------------------------------------------------------

    def _act(self, state: RunState) -> None:
        local = [key for key in self.ranks if key.run_id == state.run_id]
        for action in plan(state, self.node, local):
            match action:
                case Start(job=job):
                    log.info("rank.placed", rank=str(job.key), gpus=job.gpus)
                    self.executor.begin(job.key)
                    self._launch(job.key, job, resume=False)
                case Release(key=key, reason=reason):
                    log.info("rank.release", rank=str(key), reason=reason.code)
                    self.ranks[key] = RankControl(key)
                    self._spawn(key, self._release(key, reason))
                case Stop(key=key, reason=reason) if key in self.tasks:
                    self.ranks[key].stop(reason)
                case Kill(key=key) if key in self.tasks:
                    self.ranks[key].kill()

    def _launch(self, key: RankKey, job: RankJob | None, *, resume: bool) -> None:
        if job is not None and self._sampler is not None:
            self.telemetry.track(key, job.gpus)  # until its rank.exited takes the summary
        control = self.ranks[key] = RankControl(key)
        self._spawn(key, self.executor.run(key, job, control, resume=resume))

    def _spawn(self, key: RankKey, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"rank:{key}")
        self.tasks[key] = task
        task.add_done_callback(lambda done: self._rank_done(key, done))

    def _rank_done(self, key: RankKey, task: asyncio.Task[None]) -> None:
        if self.tasks.get(key) is task:
            del self.tasks[key]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("rank.failed", rank=str(key), error=repr(exc), exc_info=exc)

    async def _release(self, key: RankKey, reason: Reason) -> None:
        gone = exited(key, self.node, self.settings.actor, new_id, exit_code=None, reason=reason)
        with contextlib.suppress(RankGone):  # the log released it meanwhile
            await self.reporter.report(key, lambda _a, _r: [gone])


def make_executor(settings: NodeAgentSettings, reporter: Reporter, store: EventStore) -> Executor:
    match settings.executor:
        case "process":
            return ProcessExecutor(settings, reporter, store.redis)
        case "kubernetes":
            # Imported here: a process agent need not load the kubernetes client.
            from services.node_agent.kube.executor import KubeExecutor  # noqa: PLC0415

            return KubeExecutor(settings, reporter, store.redis)
        case "container":
            from services.node_agent.container.executor import (  # noqa: PLC0415
                ContainerExecutor,
            )
            from services.node_agent.secrets import OwnerSecrets  # noqa: PLC0415

            keyring = settings.secrets_keyring_file
            secrets = OwnerSecrets(
                SecretValues(store.redis), None if keyring is None else KeyringFile(keyring)
            )
            return ContainerExecutor(settings, reporter, store.redis, secrets=secrets)
        case _:
            assert_never(settings.executor)


def _job(state: RunState | None, key: RankKey) -> RankJob | None:
    if state is None or key.attempt >= len(state.attempts):
        return None
    attempt = state.attempts[key.attempt]
    return job_of(state, attempt, key.rank) if attempt.rank(key.rank) is not None else None


def _position(position: str) -> tuple[int, int]:
    millis, _, seq = position.partition("-")
    return int(millis), int(seq or 0)


def build_app(settings: NodeAgentSettings) -> FastStream:
    """The node-agent as a FastStream app: the agent starts before the log is consumed."""
    broker = make_broker(settings)
    store = EventStore.from_settings(settings)
    agent = NodeAgent(settings, store)
    group = f"agent:{settings.node}"
    consumers = [
        LogConsumer(
            broker,
            group=group,
            consumer=settings.node,
            handler=agent.on_record,
            settings=settings,
            stream=keys.inbox(settings.node, partition),
        )
        for partition in range(settings.partitions)
    ]

    async def start() -> None:
        await agent.start()
        for consumer in consumers:
            await consumer.prepare(store.redis)
            await agent.replay_pending(consumer.stream, group, settings.node)

    async def stop() -> None:
        await agent.stop()
        await store.close()

    return FastStream(
        broker,
        logger=logging.getLogger("runplane.faststream"),
        on_startup=[start],
        after_shutdown=[stop],
    )
