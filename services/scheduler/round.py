"""One round of the scheduler: ``decide(state, now_ms, new_id) -> list[Decision]``.

Pure: the caller passes the log's time, an id factory, who writes, and which nodes' heartbeat
keys were found missing (``silent``). Incremental: only nodes found silent, runs marked dirty
(or past their max_duration, or on a node past its drain deadline) and the queues of dirty
clusters are looked at, so a round on a quiet cluster with 10,000 waiting runs costs next to
nothing, and a queue pass reads the free GPUs the state keeps node by node, never the whole
fleet. The caller clears the dirty marks right after deciding (``ClusterState.clear_dirty``)
and applies each successful append to the state before the next round.

A silence shared by a large share of the watched nodes at once (``silent_share`` of them, two
or more, counting as ``quiet`` the silent ones and those whose key is about to expire: a shared
outage stops every beat at once, but the keys expire one beat interval apart) is taken for an
outage of the log server or the network, not of the nodes: none is declared lost (as
Kubernetes' node lifecycle controller stops evicting in a disrupted zone); the silent nodes
still get no placement. docs/fencing.md says why.

Order inside a round: silent nodes are declared lost (their attempts are handled in the next
round, once ``node.lost`` is folded); then each dirty run's progress (``progress``); then each
dirty cluster's queue (``queue``), which places nothing on a silent node. A run appears in at
most one decision per round.
"""

from __future__ import annotations

from collections.abc import Collection

from events.model import NodeLost
from services.scheduler.cluster import ClusterState
from services.scheduler.decision import Context, Decision, NewId, decision
from services.scheduler.progress import progress
from services.scheduler.queue import queue_pass


def decide(
    state: ClusterState,
    now_ms: int,
    new_id: NewId,
    *,
    actor: str = "scheduler",
    silent: Collection[str] = (),
    watched: int = 0,
    quiet: int | None = None,
    silent_share: float = 1.0,
) -> list[Decision]:
    """``watched``: how many nodes' heartbeats were looked at to find ``silent``; ``quiet``:
    how many of them were silent or about to be (default: the silent ones)."""
    ctx = Context(now_ms, new_id, actor)
    decisions: list[Decision] = []
    quiet = len(silent) if quiet is None else quiet
    losing = () if shared_outage(quiet, watched, silent_share) else silent
    for name in sorted(losing):
        node = state.nodes.get(name)
        if node is not None and node.registered and node.alive:
            lost = NodeLost(
                id=new_id(), actor=actor, node=name, cluster=node.cluster, last_seen=node.last_seen
            )
            decisions.append(decision([lost], node.version))
    busy: set[str] = set()
    for run_id in sorted(state.dirty_runs.union(state.overdue(now_ms), state.drain_due(now_ms))):
        run = state.runs.get(run_id)
        if run is None:
            continue
        if events := progress(state, run, ctx):
            decisions.append(decision(events, run.version))
            busy.add(run_id)
    for cluster in sorted(state.dirty_clusters):
        decisions += queue_pass(state, cluster, ctx, busy=busy, silent=silent)
    return decisions


def shared_outage(quiet: int, watched: int, silent_share: float) -> bool:
    """So many nodes went quiet at once that the silence is not theirs."""
    return watched >= 2 and quiet >= silent_share * watched
