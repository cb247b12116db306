"""Cluster utilization: what ``mcli util`` shows, per cluster and instance type.

An instance type is (cluster, gpu_type, GPUs per node). Rows:
- ``instance`` ``<cluster>|<gpu_type>|<gpus>``: nodes, GPUs total / used / available, in the
  indexes ``instances:<cluster>`` and ``instances`` (every cluster's).
- ``active`` ``<run_id>``: a run whose latest attempt holds GPUs (STARTING, RUNNING,
  TERMINATING), in ``active:<cluster>``; gone when the attempt ends.
- ``node`` ``<node>``: a node, up or lost, and its cordon or drain (``NodeLine``), in the
  index ``nodes``.
- ``queued`` ``<run_id>``: a run whose latest attempt waits (PENDING, QUEUED), with the
  scheduler's last reason, in ``queued:<cluster>``; gone when it is placed or ends.
- ``done`` ``<run_id>``: a run whose latest attempt ended (``DoneRun``, in no index): what it
  needs to come back (``restore``) once it left memory; gone when a restart or retry reopens
  it; kept, marked ``deleted``, when the run is deleted (so every run at rest has one: the cold
  rows' ``anchor``). Readers never read it.

Invariants: a node counts from its ``node.registered`` (again after each restart) until
``node.lost``; a cordoned, draining or drained node counts in the total, and its free GPUs
count as cordoned, not available, until ``node.uncordoned`` (a re-registration keeps them
so). A GPU its node reported failed (``node.gpu_failed``) counts as failed, not available nor
cordoned, until the node registers again; one still held counts as used until its rank's
end. A GPU is used from the placement that took it until its rank's ``rank.exited``. Queue
positions are not stored (they change whenever anyone joins or leaves): ``queue_order`` sorts
the queued rows the scheduler's way, priority (auto > low > lowest) and then age.

A node's events are on its partition of the log and a run's on the run's: the projector may
fold them in any interleaving (``projections.engine``). So what a node holds is kept as the
runs' ranks on it (``held_on``, whether the node is known yet or not), never as a count the
placement and the rank's exit move: a placement folded before its node's registration, or an
exit after the node's loss, counts the same as in the order they happened.

A run whose latest attempt ended holds nothing on any node; once at rest it may leave memory
(``evict_resting``) and come back from its ``done`` row (``restore``), which holds the whole
of the fold's state of it. Its ``active`` and ``queued`` rows are gone then, so nothing but
that row could bring it back.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, ClassVar, Literal

import msgspec

from events.codec import Recorded
from events.fit import InstanceType
from events.model import (
    ATTEMPT_ENDS,
    NODE_EVENT_TYPES,
    AttemptQueued,
    AttemptScheduled,
    NodeRegistered,
    RankExited,
    RestartRequested,
    RetryScheduled,
    RunDeleted,
    RunSubmitted,
    UpdateRequested,
)
from events.nodes import NodeState as AdminState
from events.nodes import Service
from events.nodes import evolve as evolve_node
from events.spec import PRIORITY_RANK
from projections.base import LetsRunsGo, Row, RowKey, encode, skipped

NodeState = Literal["up", "lost"]
_NODE_EVENTS = frozenset(NODE_EVENT_TYPES)  # every one changes a node's state
_ENDS = ATTEMPT_ENDS
_CONCERNED = _ENDS | {
    UpdateRequested,
    RestartRequested,
    RetryScheduled,
    AttemptQueued,
    AttemptScheduled,
    RankExited,
    RunDeleted,
}


class Instance(msgspec.Struct, kw_only=True, gc=False):
    cluster: str
    name: str  # h100_80gbx8
    gpu_type: str | None
    gpus_per_node: int
    nodes: int = 0
    #: Every node registered with this type, lost ones too (they may come back): what the fit
    #: rules judge a request by (``events.fit``), as the scheduler does.
    registered: int = 0
    gpus_total: int = 0
    gpus_used: int = 0
    gpus_available: int = 0
    #: GPUs free on nodes up but cordoned, draining or drained by an admin: not available.
    gpus_cordoned: int = 0
    #: GPUs their node reported failed (an Xid, ECC errors, lost): neither available nor
    #: cordoned, until the node registers again.
    gpus_failed: int = 0

    @property
    def node_info(self) -> str:
        return f"{self.gpus_per_node}x{self.gpu_type or 'cpu'}"


class RunLine(msgspec.Struct, kw_only=True, gc=False):
    """A run in ``util``'s active or queued list."""

    run_id: str
    run_name: str
    user: str
    cluster: str
    gpus: int
    priority: str
    preemptible: bool
    created_at: int
    since: int  # placed (active) or opened (queued) at
    reason: str = ""


class NodeLine(msgspec.Struct, kw_only=True, gc=False):
    """A node as ``mcli admin nodes list`` shows it (``sinfo -R``): up or lost, its service
    state as admins set it (``events.nodes``), who set it, why and since when."""

    name: str
    cluster: str
    gpu_type: str | None
    gpus: int
    gpus_used: int
    state: NodeState
    service: Service
    reason: str = ""
    by: str = ""
    since: int = 0
    deadline: int | None = None  # draining: when what still runs there is ended


class _Node(msgspec.Struct, kw_only=True, gc=False):
    cluster: str
    gpu_type: str | None
    gpus: int
    #: GPUs held on it: the sum of its ``held_on`` (kept beside them, not recounted per row).
    used: int = 0
    #: Liveness and the admins' cordon, drain, uncordon, folded by the one rule (``events.nodes``).
    admin: AdminState = msgspec.field(default_factory=lambda: AdminState(name=""))

    @property
    def state(self) -> NodeState:
        return "up" if self.admin.alive else "lost"

    @property
    def in_service(self) -> bool:
        return self.admin.service == "ready"

    def line(self) -> NodeLine:
        admin = self.admin
        return NodeLine(
            name=admin.name,
            cluster=self.cluster,
            gpu_type=self.gpu_type,
            gpus=self.gpus,
            gpus_used=self.used,
            state=self.state,
            service=admin.service,
            reason=admin.reason,
            by=admin.by,
            since=admin.since,
            deadline=admin.deadline,
        )


class _Run(msgspec.Struct, kw_only=True, gc=False):
    line: RunLine
    requested_gpus: int
    attempt: int = 0
    #: ``deleted``: its ``done`` row says so; it leaves memory as a run at rest does.
    phase: Literal["queued", "active", "done", "deleted"] = "queued"
    held: dict[int, tuple[str, int]] = msgspec.field(default_factory=dict)  # rank: (node, gpus)


class DoneRun(msgspec.Struct, array_like=True, gc=False):
    """The ``done`` row: a run whose latest attempt ended, as the fold holds it (its line but
    the id, which is the row's; its phase ``done`` or ``deleted``, holding nothing). A JSON
    array, about 110 bytes: written when an attempt ends (again on an update while it is
    done, and when it is deleted)."""

    run_name: str
    user: str
    cluster: str
    gpus: int
    priority: str
    preemptible: bool
    created_at: int
    since: int
    reason: str
    requested_gpus: int
    attempt: int
    #: The run was deleted: its row stays, so a run at rest always has one (the cold rows'
    #: ``anchor``, ``projections.cold``), and says so.
    deleted: bool = False

    @classmethod
    def of(cls, run: _Run) -> DoneRun:
        line = run.line
        return cls(
            run_name=line.run_name,
            user=line.user,
            cluster=line.cluster,
            gpus=line.gpus,
            priority=line.priority,
            preemptible=line.preemptible,
            created_at=line.created_at,
            since=line.since,
            reason=line.reason,
            requested_gpus=run.requested_gpus,
            attempt=run.attempt,
            deleted=run.phase == "deleted",
        )

    def run(self, run_id: str) -> _Run:
        line = RunLine(
            run_id=run_id,
            run_name=self.run_name,
            user=self.user,
            cluster=self.cluster,
            gpus=self.gpus,
            priority=self.priority,
            preemptible=self.preemptible,
            created_at=self.created_at,
            since=self.since,
            reason=self.reason,
        )
        phase: Literal["done", "deleted"] = "deleted" if self.deleted else "done"
        return _Run(
            line=line, requested_gpus=self.requested_gpus, attempt=self.attempt, phase=phase
        )


_done_decoder = msgspec.json.Decoder(DoneRun)


class _Memory(msgspec.Struct, gc=False):
    """What the fold holds, as the runner keeps it (``projections.base.Resumable``)."""

    nodes: dict[str, _Node]
    runs: dict[str, _Run]
    held_on: dict[str, dict[tuple[str, int], int]]
    _resting: dict[str, int]


class UtilizationProjection(LetsRunsGo):
    name: ClassVar[str] = "utilization"
    Memory: ClassVar[type[msgspec.Struct]] = _Memory
    #: 2: instance rows count ``registered`` nodes; 3: cordoned GPUs apart from available,
    #: and a ``node`` row per node; 4: failed GPUs apart from both; 5: a ``done`` row per run
    #: whose latest attempt ended (what brings it back once it left memory).
    version: ClassVar[int] = 6
    handles: ClassVar[frozenset[type]] = _NODE_EVENTS | _CONCERNED | {RunSubmitted}

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self.runs: dict[str, _Run] = {}
        #: Per node (known or not yet), the GPUs each run's rank holds there: (run, rank) -> GPUs.
        self.held_on: dict[str, dict[tuple[str, int], int]] = {}
        #: Runs that came to rest (log time, ms), the earliest first, to let go later.
        self._resting: dict[str, int] = {}

    def apply(self, record: Recorded) -> Collection[RowKey]:  # noqa: PLR0911
        event: Any = record.event  # dispatched on its exact type below
        kind = type(event)
        if kind in _NODE_EVENTS:
            return self._node(event)
        if kind is RunSubmitted:
            return self._submitted(event)
        run = self.runs.get(event.run_id) if kind in _CONCERNED else None
        if run is None:
            return ()
        if kind is UpdateRequested:
            return self._update(run, event)
        if run.phase == "deleted":  # the rules refuse anything after: nothing to fold
            return ()
        if kind is RunDeleted:  # after its end (the rules): it never comes back
            run.phase = "deleted"  # and leaves memory with the runs at rest
            return (("done", event.run_id),)
        if kind is RestartRequested or kind is RetryScheduled:
            if run.phase != "done":
                return skipped(self.name, record, "the latest attempt has not ended")
            return self._reopen(run, event)
        return self._attempt(run, kind, event) if event.attempt == run.attempt else ()

    def _attempt(self, run: _Run, kind: type, event: Any) -> Collection[RowKey]:
        if kind is AttemptQueued and run.phase == "queued":
            run.line.reason = event.reason
            return (("queued", run.line.run_id),)
        if kind is AttemptScheduled and run.phase == "queued":
            return self._place(run, event)
        if kind is RankExited and run.phase == "active":
            return self._release(run, event.rank)
        if kind in _ENDS and run.phase != "done":
            changed: list[RowKey] = []
            for rank in list(run.held):
                changed += self._release(run, rank)
            changed += [(run.phase, run.line.run_id), ("done", run.line.run_id)]
            run.phase = "done"
            self._resting.setdefault(run.line.run_id, event.time)
            return changed
        return ()

    def _update(self, run: _Run, event: UpdateRequested) -> Collection[RowKey]:
        if event.priority is not None:
            run.line.priority = event.priority
        if event.preemptible is not None:
            run.line.preemptible = event.preemptible
        return ((run.phase, run.line.run_id),)  # a done run's: its ``done`` row

    def _reopen(self, run: _Run, event: RestartRequested | RetryScheduled) -> Collection[RowKey]:
        run.attempt, run.phase = event.attempt, "queued"
        run.line.since, run.line.reason = event.time, ""
        run.line.gpus = run.requested_gpus
        return (("queued", run.line.run_id), ("done", run.line.run_id))

    def _submitted(self, event: RunSubmitted) -> Collection[RowKey]:
        compute, scheduling = event.spec.compute, event.spec.scheduling
        line = RunLine(
            run_id=event.run_id,
            run_name=event.name,
            user=event.actor,
            cluster=compute.cluster,
            gpus=compute.gpus,
            priority=scheduling.priority,
            preemptible=scheduling.preemptible,
            created_at=event.time,
            since=event.time,
        )
        self.runs.setdefault(event.run_id, _Run(line=line, requested_gpus=compute.gpus))
        return (("queued", event.run_id),)

    def _node(self, event: Any) -> Collection[RowKey]:
        node = self.nodes.get(event.node)
        changed: list[RowKey] = []
        if node is None:
            if not isinstance(event, NodeRegistered):
                return ()
            node = self.nodes[event.node] = _Node(
                cluster=event.cluster, gpu_type=event.gpu_type, gpus=event.gpus
            )
            node.admin.name = event.node
            node.used = sum(self.held_on.get(event.node, {}).values())  # placed before it came
        elif isinstance(event, NodeRegistered):
            changed.append(("instance", _instance_id(node)))
            node.cluster, node.gpu_type, node.gpus = event.cluster, event.gpu_type, event.gpus
        evolve_node(node.admin, event)
        changed += [("instance", _instance_id(node)), ("node", event.node)]
        return changed

    def _place(self, run: _Run, event: AttemptScheduled) -> Collection[RowKey]:
        changed: list[RowKey] = [("queued", run.line.run_id), ("active", run.line.run_id)]
        run.phase = "active"
        run.line.since, run.line.reason, run.line.cluster = event.time, "", event.cluster
        run.line.gpus = sum(len(rank.gpus) for rank in event.ranks)
        for rank in event.ranks:
            run.held[rank.rank] = (rank.node, len(rank.gpus))
            self.held_on.setdefault(rank.node, {})[run.line.run_id, rank.rank] = len(rank.gpus)
            node = self.nodes.get(rank.node)
            if node is not None:
                node.used += len(rank.gpus)
                changed += [("instance", _instance_id(node)), ("node", rank.node)]
        return changed

    def _release(self, run: _Run, rank: int) -> list[RowKey]:
        held = run.held.pop(rank, None)
        if held is None:
            return [("active", run.line.run_id)]
        on = self.held_on.get(held[0], {})
        gpus = on.pop((run.line.run_id, rank), 0)
        node = self.nodes.get(held[0])
        if node is None:
            return [("active", run.line.run_id)]
        node.used -= gpus
        return [("instance", _instance_id(node)), ("node", held[0])]

    def rows(self, keys: Iterable[RowKey]) -> Iterable[Row]:
        for kind, key in keys:
            if kind == "instance":
                yield self._instance_row(key)
                continue
            if kind == "node":
                body = encode(self.nodes[key].line())
                yield Row(kind=kind, id=key, body=body, index=(("nodes", 0),))
                continue
            run = self.runs.get(key)
            if run is None:
                continue
            if kind == "done":
                done = encode(DoneRun.of(run)) if run.phase in ("done", "deleted") else None
                yield Row(kind=kind, id=key, body=done)
                continue
            index = f"{kind}:{run.line.cluster}"
            if run.phase == kind:
                score = run.line.created_at
                yield Row(kind=kind, id=key, body=encode(run.line), index=((index, score),))
            else:
                yield Row(kind=kind, id=key, body=None, unindex=(index,))

    def at_rest(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        return run is not None and run.phase in ("done", "deleted")

    def forget(self, run_id: str) -> None:
        del self.runs[run_id]

    def holds(self, run_id: str) -> bool:
        return run_id in self.runs

    def restoring(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> list[RowKey]:
        key = ("done", run_id)
        return [] if run_id in self.runs or key in found else [key]

    def restore(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> None:
        body = found.get(("done", run_id))
        if body is None or run_id in self.runs:
            return
        run = self.runs[run_id] = _done_decoder.decode(body).run(run_id)
        # It came to rest after ``since`` (placed or opened then): to leave again, once at
        # rest long enough (maybe sooner than it would have; it is read back again if so).
        self._resting[run_id] = run.line.since

    def as_stored(
        self, run_id: str, found: Mapping[RowKey, bytes | None]
    ) -> tuple[list[RowKey], list[Row]]:
        """Its ``done`` row, in no index (none: a run it never saw). A run at
        rest has no ``queued`` or ``active`` row: each went when its phase ended. Not the
        nodes and instances it was on: every run's."""
        key = ("done", run_id)
        if key not in found:
            return [key], []
        body = found[key]
        return [], [] if body is None else [Row(kind="done", id=run_id, body=body)]

    def _instance_row(self, key: str) -> Row:
        cluster, gpu_type, gpus_text = key.split("|")
        gpus = int(gpus_text)
        kind = InstanceType(gpu_type if gpu_type != "cpu" else None, gpus)
        instance = Instance(
            cluster=cluster, name=kind.name, gpu_type=kind.gpu_type, gpus_per_node=gpus
        )
        for node in self.nodes.values():
            if _instance_id(node) != key:
                continue
            instance.registered += 1
            if node.state == "lost":
                continue
            instance.nodes += 1
            instance.gpus_total += node.gpus
            instance.gpus_used += node.used
            # A failed GPU an attempt still holds is used until that attempt ends (it will).
            failed = min(len(node.admin.failed_gpus), max(0, node.gpus - node.used))
            instance.gpus_failed += failed
            free = max(0, node.gpus - node.used - failed)
            if node.in_service:
                instance.gpus_available += free
            else:
                instance.gpus_cordoned += free
        return Row(
            kind="instance",
            id=key,
            body=encode(instance),
            index=((f"instances:{cluster}", 0), ("instances", 0)),
        )


def _instance_id(node: _Node) -> str:
    return f"{node.cluster}|{node.gpu_type or 'cpu'}|{node.gpus}"


def queue_order(queued: Iterable[RunLine]) -> list[RunLine]:
    """The scheduler's order: higher priority first, then older runs, then by id."""
    return sorted(queued, key=lambda r: (-PRIORITY_RANK.get(r.priority, 0), r.created_at, r.run_id))


# --- as readers get it (projections.query, the API, the CLI) ---------------------------------


class QueuedRun(msgspec.Struct, kw_only=True):
    position: int  # from 1, in the scheduler's order
    run: RunLine


class ClusterUtilization(msgspec.Struct, kw_only=True):
    cluster: str
    instances: list[Instance]
    active_runs: list[RunLine]
    queued_runs: list[QueuedRun]

    def active_runs_by_user(self) -> dict[str, list[RunLine]]:
        return _by_user(self.active_runs)

    def queued_runs_by_user(self) -> dict[str, list[QueuedRun]]:
        grouped: dict[str, list[QueuedRun]] = {}
        for queued in self.queued_runs:
            grouped.setdefault(queued.run.user, []).append(queued)
        return grouped


def _by_user(runs: Iterable[RunLine]) -> dict[str, list[RunLine]]:
    grouped: dict[str, list[RunLine]] = {}
    for run in runs:
        grouped.setdefault(run.user, []).append(run)
    return grouped
