"""The scheduler's view of the world, folded from the log: nodes, runs, and who holds which GPU.

Pure: no IO, no clock. The edge feeds it ``Recorded`` events (replayed, consumed, or its own
appends) and reads it to decide.

Invariants:
- Each aggregate's events are applied once, in order, by ``Recorded.version``: a version
  already folded is skipped, the next one is applied, anything further is a gap
  (``Applied.GAP``) and the edge reloads that aggregate's whole history (``reload``).
- Runs are folded with ``events.lifecycle.evolve``, so this state never holds a step the rules
  refuse (such an event is reported as ``Applied.REFUSED`` and left out).
- GPU allocations are derived from the runs, never stored apart: an attempt holds the GPUs of
  its placement from ``attempt.scheduled`` until it leaves TERMINATING, whatever its ranks
  report. ``used`` maps (node, GPU index) to that attempt; ``double_booked`` lists any GPU the
  log itself gave twice (it must stay empty). ``active``, ``terminating`` and ``preemptible``
  (holding, not TERMINATING, preemptible: what a preemption may stop) are indexed alike;
  ``preemptible`` by priority too (``Stoppable``), so a queue pass looks only at the attempts
  below the priority of one that does not fit: none, in a full cluster of equals.
- A settled run (latest attempt terminal, nothing left for the scheduler) is dropped from
  memory by ``drop_settled`` (the edge calls it between batches, never inside one append's
  events); its version stays in ``settled`` so its old events are skipped when they come back,
  and a new event of it (a restart) is a gap that reloads it.
- Per cluster, ``capacity`` (the free GPUs of its usable nodes), ``fleets`` (its registered
  nodes per instance type, what ``events.fit`` judges by) and ``cordoned`` (its nodes up but
  cordoned, draining or drained) are kept up to date node by node: every change of a node or
  of the GPUs held on it (``_apply_node``, ``reload``, ``_hold``, ``_release``) refreshes that
  one node by the rules that say what is usable and free (``Node.usable``, ``Node.cordoned``,
  ``free_gpus``), so they always equal what a rebuild from every node would give, and a queue
  pass reads them without walking the fleet.
- Per cluster, ``waiting`` (``services.scheduler.waiting.Waiting``) keeps the waiting attempts
  in queue order, by class and by what their latest ``attempt.queued`` says, changed run by
  run (``_index_queue``, ``_forget``).
- Every change the scheduler must look at marks its run (``dirty_runs``) or its cluster's queue
  (``dirty_clusters``) dirty; ``decide`` reads only those, the edge clears them after deciding.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgspec

from events.codec import Order, Recorded, order
from events.errors import IllegalTransition
from events.fit import InstanceType
from events.lifecycle import RunState, evolve
from events.model import (
    AnyNodeEvent,
    AnyRunEvent,
    NodeEvent,
    NodeLost,
    NodeRegistered,
    RankExited,
    RestartRequested,
    RetryScheduled,
    RunEvent,
    UpdateRequested,
)
from events.nodes import NodeState
from events.nodes import evolve as evolve_node
from events.spec import PRIORITY_RANK
from events.status import RunStatus
from events.usage import HOUR_MS
from services.scheduler.placement import Capacity
from services.scheduler.waiting import Waiting, mark_of

S = RunStatus


class Applied(enum.Enum):
    APPLIED = "applied"
    SKIPPED = "skipped"  # already folded (redelivery, or our own append coming back)
    GAP = "gap"  # an earlier event of the aggregate is missing: reload its history
    REFUSED = "refused"  # the lifecycle rules refuse it: left out


_VERDICTS = {Order.SEEN: Applied.SKIPPED, Order.GAP: Applied.GAP, Order.NEXT: None}


class Node(msgspec.Struct, kw_only=True):
    name: str
    cluster: str
    gpu_type: str | None = None
    gpus: int = 0
    gpu_uuids: list[str] = msgspec.field(default_factory=list)
    cpus: int = 0
    registered: bool = False
    alive: bool = False
    #: Cordon, drain and uncordon as admins set them (``events.nodes``), folded alike.
    service: NodeState = msgspec.field(default_factory=lambda: NodeState(name=""))
    registered_at: int = 0  # log time of its latest node.registered
    last_seen: int = 0  # log time its heartbeat key was last seen (or its registration)
    #: Log time until which its heartbeat key is sure to exist, from its expiry as last read
    #: (0: not known). Its agent sets it with the same expiry each beat (services.core.timeouts),
    #: so the expiry only moves later; a registration, after which it may not, forgets it.
    alive_until: int = 0
    version: int = 0

    @property
    def failed_gpus(self) -> dict[int, str]:
        """GPU index -> what failed it, as the node's events say (``events.nodes``)."""
        return self.service.failed_gpus

    @property
    def usable(self) -> bool:
        """New placements may go here."""
        return self.registered and self.alive and self.service.service == "ready"

    @property
    def cordoned(self) -> bool:
        """Up, but an admin keeps placements off it (cordoned, draining or drained)."""
        return self.registered and self.alive and not self.usable

    @property
    def instance(self) -> InstanceType:
        return InstanceType(self.gpu_type, self.gpus)

    @property
    def drained(self) -> bool:
        """Its attempts are ended at once (``node.drained``)."""
        return self.service.service == "drained"


class Holding(NamedTuple):
    """The GPUs one attempt holds: ``((node, (gpu, ...)), ...)`` in rank order."""

    attempt: int
    ranks: tuple[tuple[str, tuple[int, ...]], ...]


class Stoppable:
    """A cluster's attempts a preemption may stop, by their priority's rank (``PRIORITY_RANK``),
    which may change while they hold GPUs (``update``)."""

    __slots__ = ("by_rank", "rank_of")

    def __init__(self) -> None:
        self.by_rank: dict[int, set[str]] = {}
        self.rank_of: dict[str, int] = {}

    def put(self, run_id: str, rank: int) -> None:
        before = self.rank_of.get(run_id)
        if before == rank:
            return
        if before is not None:
            self.by_rank[before].discard(run_id)
        self.by_rank.setdefault(rank, set()).add(run_id)
        self.rank_of[run_id] = rank

    def discard(self, run_id: str) -> None:
        rank = self.rank_of.pop(run_id, None)
        if rank is not None:
            self.by_rank[rank].discard(run_id)

    def below(self, rank: int) -> list[tuple[str, int]]:
        """The attempts of a priority lower than ``rank`` (the ones it may preempt), each with
        its own rank."""
        return [(run_id, r) for r, ids in self.by_rank.items() if r < rank for run_id in ids]


class ClusterState:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.clusters: dict[str, dict[str, Node]] = {}
        self.runs: dict[str, RunState] = {}
        self.settled: dict[str, int] = {}
        self.used: dict[str, dict[int, tuple[str, int]]] = {}
        self.holdings: dict[str, Holding] = {}
        self.double_booked: list[tuple[str, int]] = []
        #: cluster -> run ids of attempts holding GPUs there; and the subset TERMINATING.
        self.active: dict[str, set[str]] = {}
        self.terminating: dict[str, set[str]] = {}
        #: cluster -> run ids of attempts holding GPUs there that a preemption may stop:
        #: preemptible, and not TERMINATING already; by priority.
        self.preemptible: dict[str, Stoppable] = {}
        #: node -> run ids of attempts holding GPUs on it.
        self.on_node: dict[str, set[str]] = {}
        #: cluster -> its waiting attempts, in queue order (``services.scheduler.waiting``).
        self.waiting: dict[str, Waiting] = {}
        #: run id -> rank indices of its latest attempt, in the order they exited.
        self.exit_order: dict[str, list[int]] = {}
        #: run id -> log time at which its RUNNING attempt exceeds max_duration.
        self.deadlines: dict[str, int] = {}
        #: node -> log time at which the attempts still on it are ended (a drain's deadline).
        self.drains: dict[str, int] = {}
        self.dirty_runs: set[str] = set()
        self.dirty_clusters: set[str] = set()
        self._settling: set[str] = set()
        #: log time this instance became active (the grace of nodes registered before).
        self.active_since = 0
        #: cluster -> the free GPUs of its usable nodes (a pass reads it through a Scratch).
        self.capacity: dict[str, Capacity] = {}
        #: cluster -> its registered nodes per instance type (``events.fit.Fleet``).
        self.fleets: dict[str, Counter[InstanceType]] = {}
        #: cluster -> its nodes up but cordoned, draining or drained (``Node.cordoned``).
        self.cordoned: dict[str, dict[str, None]] = {}
        #: node -> where it is counted in ``fleets`` (registered nodes only): its cluster, kind.
        self._counted: dict[str, tuple[str, InstanceType]] = {}

    # --- applying the log ---------------------------------------------------------------

    def apply(self, record: Recorded) -> Applied:
        event = record.event
        if isinstance(event, NodeEvent):
            return self._apply_node(record.version, event)
        if not isinstance(event, RunEvent):
            return Applied.SKIPPED  # users and keys: no concern of placement
        return self._apply_run(record.version, event)

    def known_version(self, aggregate: str) -> int:
        kind, _, name = aggregate.partition(":")
        if kind == "node":
            node = self.nodes.get(name)
            return node.version if node else 0
        run = self.runs.get(name)
        return run.version if run else self.settled.get(name, 0)

    def reload(self, aggregate: str, history: Sequence[Recorded]) -> None:
        """Replace what is known of one aggregate by its whole history (after a gap)."""
        if not history or history[-1].version <= self.known_version(aggregate):
            return
        kind, _, name = aggregate.partition(":")
        if kind == "node":
            self.nodes.pop(name, None)
            self.drains.pop(name, None)
            for cluster in self.clusters.values():
                cluster.pop(name, None)
            self._refresh(name)
            for record in history:
                self.apply(record)
            return
        # Fold first, index once: the GPUs of its old attempts were released long ago.
        self._forget(name)
        self.settled.pop(name, None)
        run: RunState | None = None
        order: list[int] = []
        for record in history:
            event = record.event
            if not isinstance(event, RunEvent):
                continue
            try:
                run = evolve(run, event)
            except IllegalTransition:
                continue
            if isinstance(event, RestartRequested | RetryScheduled):
                order = []
            elif isinstance(event, RankExited):
                order.append(event.rank)
        if run is not None:
            self.runs[name] = run
            self.exit_order[name] = order
            self._index(run, updated=True)

    def clear_dirty(self) -> None:
        self.dirty_runs.clear()
        self.dirty_clusters.clear()

    def _check(self, version: int, known: int) -> Applied | None:
        if not version:  # not read from the log (a decision applied before its append)
            return None
        return _VERDICTS[order(version, known)]

    def _apply_run(self, version: int, event: AnyRunEvent) -> Applied:
        run_id = event.run_id
        run = self.runs.get(run_id)
        if (verdict := self._check(version, self.known_version(event.aggregate))) is not None:
            return verdict
        if run is None and run_id in self.settled:
            return Applied.GAP  # a settled run moves again (a restart): fold its history
        try:
            run = evolve(run, event)
        except IllegalTransition:
            return Applied.REFUSED
        self.runs[run_id] = run
        if isinstance(event, RestartRequested | RetryScheduled):
            self.exit_order.pop(run_id, None)
        elif isinstance(event, RankExited):
            self.exit_order.setdefault(run_id, []).append(event.rank)
        self._index(run, isinstance(event, UpdateRequested))
        return Applied.APPLIED

    def _apply_node(self, version: int, event: AnyNodeEvent) -> Applied:
        node = self.nodes.get(event.node)
        if (verdict := self._check(version, node.version if node else 0)) is not None:
            return verdict
        if node is None:
            node = self.nodes[event.node] = Node(
                name=event.node, cluster=event.cluster, service=NodeState(name=event.node)
            )
            self.clusters.setdefault(event.cluster, {})[event.node] = node
        match event:
            case NodeRegistered():
                if node.cluster != event.cluster:
                    self.clusters[node.cluster].pop(node.name, None)
                    self.dirty_clusters.add(node.cluster)
                    node.cluster = event.cluster
                    self.clusters.setdefault(event.cluster, {})[node.name] = node
                node.gpu_type, node.gpus, node.cpus = event.gpu_type, event.gpus, event.cpus
                node.gpu_uuids = event.gpu_uuids
                node.registered = node.alive = True
                node.registered_at = node.last_seen = event.time
                node.alive_until = 0
            case NodeLost():
                node.alive = False
        previous = node.service.deadline
        evolve_node(node.service, event)
        if previous != node.service.deadline:
            if previous is not None:
                self.drains.pop(node.name, None)
            if node.service.deadline is not None:
                self.drains[node.name] = node.service.deadline
        node.version = version or node.version + 1
        self._refresh(node.name)
        self.dirty_clusters.add(node.cluster)
        self.dirty_runs.update(self.on_node.get(node.name, ()))
        return Applied.APPLIED

    # --- derived indexes --------------------------------------------------------------

    def _index(self, run: RunState, updated: bool) -> None:
        self.dirty_runs.add(run.run_id)
        self._index_gpus(run, updated)
        self._index_queue(run)
        attempt = run.latest
        hours = run.spec.scheduling.max_duration
        if attempt.status is S.RUNNING and hours is not None:
            started = next(t for status, t in reversed(attempt.timeline) if status is S.RUNNING)
            self.deadlines[run.run_id] = started + int(hours * HOUR_MS)
        else:
            self.deadlines.pop(run.run_id, None)
        if attempt.status.is_terminal() and (run.deleted or not run.delete_requested):
            self._settling.add(run.run_id)
        else:
            self._settling.discard(run.run_id)

    def _index_gpus(self, run: RunState, updated: bool) -> None:
        run_id, cluster, attempt = run.run_id, run.spec.compute.cluster, run.latest
        holding = None
        if attempt.status.is_active() and not run.deleted:
            holding = Holding(
                attempt.index, tuple((rank.node, tuple(rank.gpus)) for rank in attempt.ranks)
            )
        if holding != self.holdings.get(run_id):
            self._release(run_id, cluster)
            if holding is not None:
                self._hold(run_id, cluster, holding)
            self.dirty_clusters.add(cluster)
        ending = self.terminating.setdefault(cluster, set())
        if attempt.status is S.TERMINATING and run_id not in ending:
            ending.add(run_id)
            self.dirty_clusters.add(cluster)  # its GPUs are about to be released
        elif attempt.status is not S.TERMINATING:
            ending.discard(run_id)
        stoppable = self.preemptible.get(cluster)
        if stoppable is None:
            stoppable = self.preemptible[cluster] = Stoppable()
        scheduling = run.spec.scheduling
        if holding is not None and attempt.status is not S.TERMINATING and scheduling.preemptible:
            stoppable.put(run_id, PRIORITY_RANK[scheduling.priority])
        else:
            stoppable.discard(run_id)
        if updated and holding is not None:
            self.dirty_clusters.add(cluster)  # its priority or preemptible may have changed

    def _index_queue(self, run: RunState) -> None:
        run_id, cluster, attempt = run.run_id, run.spec.compute.cluster, run.latest
        queue = self.waiting.get(cluster)
        if queue is None:
            queue = self.waiting[cluster] = Waiting()
        if attempt.status.is_waiting() and not (run.deleted or run.delete_requested):
            priority = PRIORITY_RANK[run.spec.scheduling.priority]
            compute = run.spec.compute
            moved = queue.put(
                run_id,
                (-priority, attempt.timeline[0][1], run_id),
                ((compute.gpus, compute.nodes, compute.gpu_type, compute.instance), priority),
                mark_of(attempt),
            )
        else:
            moved = queue.discard(run_id)
        if moved:
            self.dirty_clusters.add(cluster)

    def drop_settled(self) -> None:
        """Forget the runs the scheduler has nothing more to do for (memory stays bounded)."""
        settling, self._settling = self._settling, set()
        for run_id in settling:
            run = self.runs.get(run_id)
            if run is not None:
                self._forget(run_id)
                self.settled[run_id] = run.version

    def _hold(self, run_id: str, cluster: str, holding: Holding) -> None:
        self.holdings[run_id] = holding
        self.active.setdefault(cluster, set()).add(run_id)
        for node, gpus in holding.ranks:
            self.on_node.setdefault(node, set()).add(run_id)
            used = self.used.setdefault(node, {})
            for gpu in gpus:
                if gpu in used and used[gpu][0] != run_id:
                    self.double_booked.append((node, gpu))
                else:
                    used[gpu] = (run_id, holding.attempt)
            self._refresh(node)

    def _release(self, run_id: str, cluster: str) -> None:
        holding = self.holdings.pop(run_id, None)
        if holding is None:
            return
        self.active.get(cluster, set()).discard(run_id)
        for node, gpus in holding.ranks:
            self.on_node.get(node, set()).discard(run_id)
            used = self.used.get(node, {})
            for gpu in gpus:
                if used.get(gpu, ("", 0))[0] == run_id:
                    del used[gpu]
            self._refresh(node)

    def _refresh(self, name: str) -> None:
        """Bring ``capacity``, ``fleets`` and ``cordoned`` in line with node ``name`` (its cost:
        that node's GPUs), after anything that may change it or the GPUs held on it."""
        node = self.nodes.get(name)
        counted = (node.cluster, node.instance) if node is not None and node.registered else None
        was = self._counted.get(name)
        if was != counted:
            if was is not None:
                cluster, kind = was
                del self._counted[name]
                fleet = self.fleets[cluster]
                fleet[kind] -= 1
                if not fleet[kind]:
                    del fleet[kind]
                if self.capacity[cluster].has(name):
                    self.capacity[cluster].remove_node(name)
                self.cordoned[cluster].pop(name, None)
            if counted is not None:
                self._counted[name] = counted
                self.fleets.setdefault(counted[0], Counter())[counted[1]] += 1
        if node is None or counted is None:
            return
        capacity = self.capacity.setdefault(node.cluster, Capacity())
        cordoned = self.cordoned.setdefault(node.cluster, {})
        if node.usable:
            free = self.free_gpus(node)
            if capacity.free.get(name) != free:
                if capacity.has(name):
                    capacity.remove_node(name)
                capacity.add_node(name, node.gpu_type, node.gpus, free)
        elif capacity.has(name):
            capacity.remove_node(name)
        if node.cordoned:
            cordoned[name] = None
        else:
            cordoned.pop(name, None)

    def _forget(self, run_id: str) -> None:
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        cluster = run.spec.compute.cluster
        if run_id in self.holdings:
            self._release(run_id, cluster)
            self.dirty_clusters.add(cluster)
        self.terminating.get(cluster, set()).discard(run_id)
        if (stoppable := self.preemptible.get(cluster)) is not None:
            stoppable.discard(run_id)
        if (queue := self.waiting.get(cluster)) is not None and queue.discard(run_id):
            self.dirty_clusters.add(cluster)
        self.deadlines.pop(run_id, None)
        self.exit_order.pop(run_id, None)
        self._settling.discard(run_id)

    # --- reading ----------------------------------------------------------------------

    def queue(self, cluster: str) -> list[str]:
        """Run ids of the attempts waiting in ``cluster``: priority first, then age."""
        queue = self.waiting.get(cluster)
        return queue.order() if queue is not None else []

    def uuids_of(self, node: str, gpus: Iterable[int]) -> list[str]:
        """The UUIDs of ``node``'s GPUs ``gpus``; none where its registration names none."""
        known = self.nodes[node].gpu_uuids if node in self.nodes else []
        if not known:
            return []
        return [known[gpu] if gpu < len(known) else "" for gpu in gpus]

    def healthy(self, node: str, gpus: Iterable[int]) -> list[int]:
        """Those of ``gpus`` that ``node`` has not reported failed: what a release gives back."""
        failed = self.nodes[node].failed_gpus if node in self.nodes else {}
        return [gpu for gpu in gpus if gpu not in failed]

    def free_gpus(self, node: Node) -> list[int]:
        used = self.used.get(node.name, {})
        failed = node.failed_gpus
        return [gpu for gpu in range(node.gpus) if gpu not in used and gpu not in failed]

    def overdue(self, now_ms: int) -> list[str]:
        """Runs whose RUNNING attempt has run past its max_duration."""
        return [run_id for run_id, deadline in self.deadlines.items() if deadline <= now_ms]

    def drain_due(self, now_ms: int) -> set[str]:
        """Runs holding GPUs on a node whose drain deadline has passed."""
        due: set[str] = set()
        for name, deadline in self.drains.items():
            if deadline <= now_ms:
                due.update(self.on_node.get(name, ()))
        return due

    def drain_past(self, node: Node, now_ms: int) -> bool:
        """Whether the attempts on ``node`` must end now: drained, or its drain is due."""
        deadline = node.service.deadline
        return node.drained or (deadline is not None and deadline <= now_ms)

    def watched_nodes(self, now_ms: int, timeout_ms: int) -> list[str]:
        """Nodes whose heartbeat must exist by now: alive, and past their grace."""
        return [
            node.name
            for node in self.nodes.values()
            if node.registered
            and node.alive
            and now_ms >= max(node.registered_at, self.active_since) + timeout_ms
        ]

    def unsure(self, nodes: Iterable[str], until_ms: int) -> list[str]:
        """Those of ``nodes`` whose heartbeat key is not sure to exist until ``until_ms``."""
        return [name for name in nodes if self.nodes[name].alive_until < until_ms]

    def saw(self, nodes: Iterable[tuple[str, int | None]], now_ms: int) -> None:
        """Their heartbeat keys existed at ``now_ms``, each with the milliseconds of life it
        had left then (-1: no expiry; None: not read, only known to exist)."""
        for name, left in nodes:
            if (node := self.nodes.get(name)) is not None:
                node.last_seen = max(node.last_seen, now_ms)
                if left is not None:
                    node.alive_until = now_ms + left if left >= 0 else 0
