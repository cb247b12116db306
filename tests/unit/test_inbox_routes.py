"""Which node-agents are told of which event (``events.inbox.route``)."""

from __future__ import annotations

from events import inbox
from events.model import (
    AttemptCompleted,
    AttemptScheduled,
    AttemptStopped,
    NodeLost,
    RankPlacement,
    Reason,
    StopRequested,
    UserAdded,
)
from tests import factories as f


def test_routes() -> None:
    ranks = [RankPlacement(rank=i, node=n, gpus=[0]) for i, n in enumerate(["b", "a", "b"])]
    run = f.new_id()
    placed = AttemptScheduled(id="1", actor="s", run_id=run, cluster="c", ranks=ranks)
    assert inbox.route(placed) == "=a b"  # each node once
    assert inbox.route(StopRequested(id="2", actor="u", run_id=run)) == inbox.TELL
    stopped = Reason(category="user", code="StoppedByUser")
    assert inbox.route(AttemptStopped(id="3", actor="s", run_id=run, reason=stopped)) == inbox.END
    assert inbox.route(AttemptCompleted(id="4", actor="s", run_id=run)) == inbox.END
    lost = NodeLost(id="5", actor="s", node="node-7", cluster="c", last_seen=0)
    assert inbox.route(lost) == "@node-7"
    assert inbox.route(UserAdded(id="6", actor="r", user="ana", role="user")) == inbox.NOBODY
