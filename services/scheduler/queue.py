"""The queue of one cluster: who is placed, who waits and why, who is preempted.

Pure. One pass over a cluster's waiting attempts in queue order: priority (auto > low >
lowest), then the time the attempt entered PENDING.

Greedy, on purpose: each attempt takes a placement if one fits now, so a later, smaller
attempt may start while a larger one ahead of it waits. That keeps GPUs busy; the price is that
a large request can wait long on a busy cluster. Two rules bound it:
- reservation: an attempt that would fit once the GPUs of TERMINATING attempts are released
  reserves that placement (its free GPUs too), so the attempts behind it cannot take them;
- preemption: an attempt that fits neither may stop preemptible STARTING/RUNNING attempts of
  lower priority whose GPUs would make it fit (reason ``Preempted``), then reserves as above.
  The victims are the holders of the GPUs one placement needs, not a minimal set.

Invariants:
- Every placement of a pass comes out of the cluster's free GPUs as the state keeps them
  (``ClusterState.capacity``), taken inside one ``Capacity.trial``, so placements never
  overlap each other or any GPU held (an attempt holds its GPUs until it leaves TERMINATING).
  The trial is undone when the pass ends: the placements take their GPUs for real when the
  edge applies their events.
- A pass costs what it touches (the nodes it takes from or hides, the attempts it judges), not
  the fleet: the capacity, the fleet and the cordoned nodes are read as the state keeps them.
  Nor the whole queue: the attempts are walked class by class (request and priority,
  ``services.scheduler.waiting``), and a class whose attempt waited without taking anything
  is parked until a preemption, its other attempts judged alike without a walk (``run``).
  The decisions come out in queue order all the same, and equal those of a walk of every
  attempt (``park=False``, held to it by the property test).
  Only the paths taken when an attempt does not fit walk more, once a pass each: the GPUs of
  TERMINATING attempts (``_releasing``) and the cluster's preemptible attempts
  (``_candidates``, from ``ClusterState.preemptible``): only those of a lower priority.
- Nothing is placed on a node that is lost, cordoned, draining, drained or silent (heartbeat
  missing this round); a request that would fit now on the free GPUs of cordoned nodes says
  so in its reason.
- A waiting attempt gets ``attempt.queued`` when it enters the queue (PENDING), and again only
  when the kind of its reason (the text before ':') changes (``waiting.needs_entry``): a queue
  of 10,000 must not write 10,000 events whenever a count or a position moves. It carries the
  shape the request was judged by (nodes, GPUs, gpu_type: the cluster's type when the request
  names none), so views show what the request means before it is placed; an attempt queued
  without one (before any node of its cluster registered, or by an older scheduler) is queued
  again once it has one, else `get runs` falls back to the request and shows ``2x gpu``.
- A request that no registered node could ever hold fails at once (user, ``Unschedulable``).
"""

from __future__ import annotations

import bisect
import heapq
import operator
from collections.abc import Collection
from typing import NamedTuple

from events.fit import Fleet, Refusal, Shape, nodes, shapes
from events.lifecycle import RunState
from events.model import (
    AnyRunEvent,
    AttemptFailed,
    AttemptQueued,
    AttemptScheduled,
    AttemptTerminating,
    RankPlacement,
    Reason,
)
from events.spec import PRIORITY_RANK
from events.status import RunStatus
from services.scheduler.cluster import ClusterState, Holding
from services.scheduler.decision import Context, Decision, decision
from services.scheduler.placement import Capacity, Free, Placement, Scratch, place, why_waiting
from services.scheduler.waiting import Class, QueueKey, Request, Waiting, mark_of, needs_entry

S = RunStatus
RELEASING = "Waiting for GPUs being released"


class _Victim(NamedTuple):
    priority: int
    started: int
    run: RunState
    holding: Holding


def _judged(found: list[Shape] | Refusal) -> dict[str, object]:
    """The shape a waiting request was judged by, as ``attempt.queued`` carries it (built only
    for the entries written: the pass looks at every queued run each round)."""
    if isinstance(found, Refusal):
        return {}
    first = found[0]
    return {"nodes": first.ranks, "gpus": first.ranks * first.per_rank, "gpu_type": first.gpu_type}


def queue_pass(
    state: ClusterState,
    cluster: str,
    ctx: Context,
    *,
    busy: Collection[str] = (),
    silent: Collection[str] = (),
    park: bool = True,
) -> list[Decision]:
    """``park``: leave out a class once its outcome is fixed (False: walk every attempt, the
    reference the property test holds the parked pass to)."""
    waiting = state.waiting.get(cluster)
    if not waiting:
        return []
    with (state.capacity.get(cluster) or Capacity()).trial() as capacity:
        return _Pass(state, cluster, ctx, capacity, busy=busy, silent=silent).run(park)


class _Pass:
    def __init__(
        self,
        state: ClusterState,
        cluster: str,
        ctx: Context,
        capacity: Capacity,
        *,
        busy: Collection[str],
        silent: Collection[str],
    ) -> None:
        """``capacity``: the cluster's, inside a trial (what the pass takes is undone)."""
        self.state, self.cluster, self.ctx, self.busy = state, cluster, ctx, busy
        self.fleet: Fleet = state.fleets.get(cluster, {})
        self.waiting = state.waiting.get(cluster) or Waiting()
        self.now = capacity
        #: Nodes up but cordoned, draining or drained: what waits may name them as the reason.
        self.cordoned = [
            state.nodes[name] for name in state.cordoned.get(cluster, ()) if name not in silent
        ]
        for name in silent:  # usually few: a silent node gets nothing this round
            if self.now.has(name):
                self.now.remove_node(name)
        self._future: Scratch | None = None
        #: Per priority rank, the attempts that rank may preempt (``_candidates``).
        self._victims: dict[int, list[_Victim]] = {}
        self.chosen: set[str] = set()
        #: Each decision with the queue key of the attempt walked when it was made.
        self.decisions: list[tuple[QueueKey, Decision]] = []
        self.at: QueueKey = (0, 0, "")
        self.shapes: dict[Request, list[Shape] | Refusal] = {}
        self.no_fit: set[tuple[Shape, ...]] = set()
        self.no_future_fit: set[tuple[Shape, ...]] = set()
        self.no_preempt: set[tuple[tuple[Shape, ...], int]] = set()
        self.reasons: dict[Shape, str] = {}
        #: Bumped whenever the pass takes or gives GPUs: an attempt that waited with it
        #: unchanged took nothing.
        self.generation = 0
        #: Bumped by each preemption: what every parked class's attempts get may change.
        self.preemptions = 0
        #: The keys of the attempts placed or failed so far, in queue order (positions).
        self.gone: list[QueueKey] = []

    def run(self, park: bool = True) -> list[Decision]:
        """Walk the waiting attempts in queue order, the classes side by side. An attempt
        that waits without taking anything (no placement, reservation or preemption) fixes
        what the rest of its class gets until a preemption: every later attempt of the class
        would find its placement, its reservation and its preemption refused as this one
        did (``no_fit``, ``no_future_fit``, ``no_preempt``; what a pass takes only shrinks
        what is free) and wait for the same reason. So the class is parked there: its
        attempts are not walked, and the few whose entry must be written again are read from
        ``Waiting.marked`` (``_settle``) when a preemption unparks it or the pass ends."""
        waiting = self.waiting
        heap = [(keys[0], cls, 0) for cls, keys in waiting.by_class.items()]
        heapq.heapify(heap)
        parked: dict[Class, tuple[QueueKey, str, list[Shape] | Refusal]] = {}
        while heap:
            key, cls, index = heapq.heappop(heap)
            generation, preemptions = self.generation, self.preemptions
            self.at = key
            waited = self._judge(self.state.runs[key[2]], cls[0])
            if waited is not None and park and self.generation == generation:
                parked[cls] = (key, *waited)
            elif index + 1 < len(keys := waiting.by_class[cls]):
                heapq.heappush(heap, (keys[index + 1], cls, index + 1))
            if self.preemptions != preemptions:
                for was, (since, reason, found) in parked.items():
                    self._settle(was, found, reason, since, key)
                    keys = waiting.by_class[was]
                    after = bisect.bisect_right(keys, key)
                    if after < len(keys):
                        heapq.heappush(heap, (keys[after], was, after))
                parked.clear()
        for cls, (since, reason, found) in parked.items():
            self._settle(cls, found, reason, since, None)
        self.decisions.sort(key=operator.itemgetter(0))
        return [decision for _, decision in self.decisions]

    def _judge(self, run: RunState, key: Request) -> tuple[str, list[Shape] | Refusal] | None:
        """Place, fail or queue one attempt; why it waits (and the shapes it was judged by),
        or None if it was placed or failed."""
        found = self.shapes.get(key)
        if found is None:
            found = self.shapes[key] = shapes(run.spec.compute, self.fleet)
        if isinstance(found, Refusal) and found.permanent:
            reason = Reason(category="user", code="Unschedulable", message=found.message)
            self._decide(run, AttemptFailed, reason=reason)
            self.gone.append(self.at)
            return None
        if isinstance(found, Refusal):
            reason_text = found.message
        else:
            placed = self._place(found)
            if placed is not None:
                self._schedule(run, self._position(self.at), *placed)
                self.gone.append(self.at)
                return None
            reason_text = self._wait(run, found)
        if needs_entry(mark_of(run.latest), reason_text, not isinstance(found, Refusal)):
            self._queued(run, reason_text, found)
        return reason_text, found

    def _settle(
        self,
        cls: Class,
        found: list[Shape] | Refusal,
        reason: str,
        since: QueueKey,
        until: QueueKey | None,
    ) -> None:
        """The attempts of parked class ``cls`` after ``since`` (and before ``until``) wait for
        ``reason``: write the entries of those whose latest one does not say so, found by
        their marks."""
        shaped = not isinstance(found, Refusal)
        for mark, runs in self.waiting.marked.get(cls, {}).items():
            if not needs_entry(mark, reason, shaped):
                continue
            for run_id in runs:
                key = self.waiting.key_of(run_id)
                if since < key and (until is None or key < until):
                    self.at = key
                    self._queued(self.state.runs[run_id], reason, found)

    def _queued(self, run: RunState, reason: str, found: list[Shape] | Refusal) -> None:
        position = self._position(self.at)
        self._decide(run, AttemptQueued, reason=reason, position=position, **_judged(found))

    def _position(self, key: QueueKey) -> int:
        """``key``'s place in the queue (from 1) once the attempts placed or failed before it
        in this pass are gone."""
        return self.waiting.position(key) - bisect.bisect_left(self.gone, key) + 1

    # --- placing ------------------------------------------------------------------------

    def _place(self, found: list[Shape]) -> tuple[Shape, Placement] | None:
        key = tuple(found)
        if key in self.no_fit:
            return None
        for shape in found:
            placement = place(shape, self.now)
            if placement is not None:
                self._take(placement)
                return shape, placement
        self.no_fit.add(key)
        return None

    def _schedule(self, run: RunState, position: int, shape: Shape, placement: Placement) -> None:
        gpu_type = shape.gpu_type
        if gpu_type is None and shape.per_rank:
            gpu_type = self.now.instance_of(placement[0][0]).gpu_type
        events: list[AnyRunEvent] = []
        if run.latest.status is S.PENDING:
            events.append(self._event(AttemptQueued, run, reason="", position=position))
        ranks = [
            RankPlacement(
                rank=index, node=node, gpus=gpus, gpu_uuids=self.state.uuids_of(node, gpus)
            )
            for index, (node, gpus) in enumerate(placement)
        ]
        events.append(
            self._event(AttemptScheduled, run, cluster=self.cluster, gpu_type=gpu_type, ranks=ranks)
        )
        self.decisions.append((self.at, decision(events, run.version)))

    def _take(self, placement: Placement) -> None:
        self.generation += 1
        for node, gpus in placement:
            self.now.take(node, gpus)
            if self._future is not None:
                self._future.take(node, gpus)

    # --- waiting: reservation and preemption --------------------------------------------

    def _wait(self, run: RunState, found: list[Shape]) -> str:
        key = tuple(found)
        future = self._releasing()
        if future is not None and key not in self.no_future_fit:
            for shape in found:
                placement = place(shape, future)
                if placement is not None:
                    self._take(placement)
                    return f"{RELEASING}: reserved on {nodes(len(placement))}"
            self.no_future_fit.add(key)
        victims = self._preempt(run, found)
        if victims:
            return f"{RELEASING}: preempting {victims} lower-priority run(s)"
        shape = found[0]
        if shape not in self.reasons:
            self.reasons[shape] = why_waiting(shape, self.now, self._cordoned_fit(shape))
        return self.reasons[shape]

    def _cordoned_fit(self, shape: Shape) -> int:
        """The cordoned nodes a placement of ``shape`` would need now, or that it needs at all
        (too few usable nodes hold it); 0: it needs none, or even they would not do."""
        if not self.cordoned:
            return 0
        hypothetical = Scratch(self.now)
        for node in self.cordoned:
            hypothetical.add_node(node.name, node.gpu_type, node.gpus, self.state.free_gpus(node))
        placement = place(shape, hypothetical)
        if placement is not None:
            return sum(not self.now.has(node) for node, _ in placement)
        usable, with_cordoned = self.now.nodes_holding(shape), hypothetical.nodes_holding(shape)
        return with_cordoned - usable if usable < shape.ranks <= with_cordoned else 0

    def _releasing(self) -> Scratch | None:
        """Free GPUs plus those TERMINATING attempts are about to release; None if none are.
        Costs the GPUs those attempts hold (few, usually), once a pass."""
        if self._future is None:
            ending = self.state.terminating.get(self.cluster, set())
            if not ending:
                return None
            self._future = Scratch(self.now)
            for run_id in ending:
                if (holding := self.state.holdings.get(run_id)) is not None:
                    for node, gpus in holding.ranks:
                        self._future.give(node, self.state.healthy(node, gpus))
        return self._future

    def _preempt(self, run: RunState, found: list[Shape]) -> int:
        priority = PRIORITY_RANK[run.spec.scheduling.priority]
        key = (tuple(found), priority)
        if key in self.no_preempt:
            return 0
        chosen = self.chosen
        victims = [v for v in self._candidates(priority) if v.run.run_id not in chosen]
        base = self._future if self._future is not None else self.now
        if victims:
            hypothetical = base.fork() if isinstance(base, Scratch) else Scratch(base)
            for victim in victims:
                for node, gpus in victim.holding.ranks:
                    hypothetical.give(node, self.state.healthy(node, gpus))
            for shape in found:
                placement = place(shape, hypothetical)
                if placement is not None:
                    return self._stop_for(run, placement, base, victims)
        self.no_preempt.add(key)
        return 0

    def _stop_for(
        self, run: RunState, placement: Placement, base: Free, victims: list[_Victim]
    ) -> int:
        holders = {
            self.state.used[node][gpu][0]
            for node, gpus in placement
            for gpu in gpus
            if gpu not in base.free_of(node)
        }
        reason = Reason(
            category="preempted",
            code="Preempted",
            message=f"preempted by {run.name} (priority {run.spec.scheduling.priority})",
        )
        if self._future is None:
            self._future = Scratch(self.now)
        stopped = 0
        self.generation += 1
        self.preemptions += 1
        for victim in victims:
            if victim.run.run_id in holders:
                self._decide(victim.run, AttemptTerminating, reason=reason)
                self.chosen.add(victim.run.run_id)
                for node, gpus in victim.holding.ranks:
                    self._future.give(node, self.state.healthy(node, gpus))
                stopped += 1
        self.no_future_fit.clear()  # more is being released now
        self._take(placement)
        return stopped

    def _candidates(self, priority: int) -> list[_Victim]:
        """The attempts an attempt of rank ``priority`` could preempt, lowest priority first:
        walks the cluster's preemptible attempts of a lower priority, once a pass per rank, and
        only when an attempt does not fit (in a full cluster of equals, none)."""
        victims = self._victims.get(priority)
        if victims is None:
            victims = []
            stoppable = self.state.preemptible.get(self.cluster)
            for run_id, rank in stoppable.below(priority) if stoppable is not None else ():
                if run_id in self.busy:
                    continue
                run = self.state.runs[run_id]
                holding = self.state.holdings[run_id]
                started = next(t for s, t in reversed(run.latest.timeline) if s is S.STARTING)
                victims.append(_Victim(rank, started, run, holding))
            # Lowest priority first; among equals the youngest, which loses the least work.
            victims.sort(key=lambda v: (v.priority, -v.started, v.run.run_id))
            self._victims[priority] = victims
        return victims

    # --- events -------------------------------------------------------------------------

    def _decide(self, run: RunState, cls: type[AnyRunEvent], **fields: object) -> None:
        self.decisions.append((self.at, decision([self._event(cls, run, **fields)], run.version)))

    def _event(self, cls: type[AnyRunEvent], run: RunState, **fields: object) -> AnyRunEvent:
        return cls(
            id=self.ctx.new_id(),
            actor=self.ctx.actor,
            run_id=run.run_id,
            attempt=run.latest.index,
            **fields,  # type: ignore[arg-type]
        )
