"""Which node-agents are told of an event: the routing of the per-node inboxes.

A node-agent reads its inboxes (``events.keys.inbox``, one per partition), never the global
log, so what it costs grows with the work placed on its node, not with the fleet. The append
function (``services/core/append.lua``) writes each event to the global log and to its
aggregate's history, and then, by the event's route, copies it into the inboxes of the nodes
concerned, in the same atomic call and under the same entry id:

- a placement (``attempt.scheduled``) names the nodes of its ranks: they become the run's told
  nodes (``events.keys.told_nodes``), replacing those of any earlier attempt, and are told;
- every other event of a run is told to the run's told nodes, if any;
- an attempt's end (completed, stopped, failed) is told to them, and then the run has none
  until its next placement;
- an event of a node is told to that node alone;
- anything else (users, keys) is told to no node.
"""

from __future__ import annotations

from events.model import ATTEMPT_ENDS, AttemptScheduled, Event, NodeEvent, RunEvent

#: Routes as the append function reads them.
TELL = ""  # the run's told nodes
END = "-"  # the run's told nodes, then none
NOBODY = "!"
PLACE = "="  # followed by the nodes, space-separated: they become the told nodes, then told
NODE = "@"  # followed by the node


def route(event: Event) -> str:
    """The route of ``event`` for the append function."""
    if isinstance(event, AttemptScheduled):
        return PLACE + " ".join(sorted({rank.node for rank in event.ranks}))
    if type(event) in ATTEMPT_ENDS:
        return END
    if isinstance(event, RunEvent):
        return TELL
    if isinstance(event, NodeEvent):
        return NODE + event.node
    return NOBODY
