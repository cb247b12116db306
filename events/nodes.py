"""A node's service state as admins set it: cordon, drain, uncordon. Pure: no IO, no clock.

``fold`` reads a node's own history (``node:<name>``); ``decide`` turns an admin's request
into the event to append on that history's version. The scheduler
(``services.scheduler.cluster``), the utilization fold and ``mcli admin nodes list`` all read
these events, so all say the same.

Invariants:
- ``ready``: placements may go there. ``cordoned``: none; what runs on it runs on.
  ``draining``: none, and what still runs at the deadline (``node.drain_requested``'s time +
  ``grace_ms``, the log's clock) is ended; ``drained``: ended at once (``node.drained``).
- Only ``node.uncordoned`` returns a node to ``ready``: its heartbeats and a re-registration
  (an agent restarted) leave the admin's state as it is.
- A request is refused for a node that never registered (``NodeRefused``); cordoning a
  cordoned node again records the new reason (who and why is what ``nodes list`` shows).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from events.errors import EventsError
from events.model import (
    AnyNodeEvent,
    Event,
    NodeCordoned,
    NodeDrained,
    NodeDrainRequested,
    NodeGpuFailed,
    NodeLost,
    NodeRegistered,
    NodeUncordoned,
)

Service = Literal["ready", "cordoned", "draining", "drained"]


class NodeRefused(EventsError):
    """An admin's request on a node that cannot be done (a node that never registered)."""

    def __init__(self, node: str, why: str) -> None:
        super().__init__(f"node {node}: {why}")
        self.node, self.why = node, why


class NodeState(msgspec.Struct, kw_only=True):
    name: str
    cluster: str = ""
    gpu_type: str | None = None
    gpus: int = 0
    registered: bool = False
    alive: bool = False
    service: Service = "ready"
    reason: str = ""
    by: str = ""  # the admin who set ``service`` (empty while ready)
    since: int = 0  # log time of the latest change of ``service``
    deadline: int | None = None  # draining: log time its attempts are ended
    #: GPU index -> what failed it (``Xid 79 on GPU 3 (GPU-...)``), until the node registers
    #: again (a new agent watches its GPUs anew, and says again).
    failed_gpus: dict[int, str] = msgspec.field(default_factory=dict)
    version: int = 0

    @property
    def usable(self) -> bool:
        return self.registered and self.alive and self.service == "ready"


def evolve(state: NodeState, event: AnyNodeEvent) -> NodeState:
    """``state`` after ``event`` (changed in place and returned)."""
    state.version += 1
    state.cluster = event.cluster
    match event:
        case NodeRegistered():
            state.gpu_type, state.gpus = event.gpu_type, event.gpus
            state.registered = state.alive = True
            state.failed_gpus = {}
        case NodeGpuFailed():
            state.failed_gpus[event.gpu] = event.what
        case NodeLost():
            state.alive = False
        case NodeDrained():
            _set(state, "drained", event, event.reason)
        case NodeCordoned():
            _set(state, "cordoned", event, event.reason)
        case NodeDrainRequested():
            _set(state, "draining", event, event.reason)
            if event.grace_ms is not None:
                state.deadline = event.time + event.grace_ms
        case NodeUncordoned():
            _set(state, "ready", event, "")
            state.by = ""
    return state


def _set(state: NodeState, service: Service, event: Event, reason: str) -> None:
    state.service, state.reason, state.by, state.since = service, reason, event.actor, event.time
    state.deadline = None


def fold(name: str, events: Iterable[AnyNodeEvent]) -> NodeState:
    state = NodeState(name=name)
    for event in events:
        evolve(state, event)
    return state


Request = Literal["cordon", "drain", "uncordon"]


def decide(
    state: NodeState,
    request: Request,
    *,
    actor: str,
    event_id: str,
    reason: str = "",
    grace_ms: int | None = None,
) -> NodeCordoned | NodeDrainRequested | NodeUncordoned:
    """The event of an admin's ``request`` on the node in ``state``."""
    if not state.registered:
        raise NodeRefused(state.name, "no such node (it never registered)")
    if grace_ms is not None and grace_ms < 0:
        raise NodeRefused(state.name, f"a drain deadline of {grace_ms} ms is not a deadline")
    node, cluster = state.name, state.cluster
    if request == "cordon":
        return NodeCordoned(id=event_id, actor=actor, node=node, cluster=cluster, reason=reason)
    if request == "drain":
        return NodeDrainRequested(
            id=event_id, actor=actor, node=node, cluster=cluster, reason=reason, grace_ms=grace_ms
        )
    return NodeUncordoned(id=event_id, actor=actor, node=node, cluster=cluster)
