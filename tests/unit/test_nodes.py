"""A node's service state (events.nodes): the fold and an admin's requests."""

from __future__ import annotations

import pytest

from events.model import NodeLost, NodeRegistered
from events.nodes import NodeRefused, NodeState, decide, evolve, fold


def _registered(at: int = 1) -> NodeRegistered:
    return NodeRegistered(
        id="r", actor="node-agent@n1", node="n1", cluster="c1", gpu_type="a100", gpus=8, time=at
    )


def _decided(state: NodeState, request: str, at: int, **kw: object) -> NodeState:
    event = decide(state, request, actor="root", event_id=f"e{at}", **kw)  # type: ignore[arg-type]
    event.time = at
    return evolve(state, event)


def test_cordon_drain_uncordon_fold_with_who_why_and_since() -> None:
    state = fold("n1", [_registered()])
    assert state.usable
    assert state.service == "ready"
    state = _decided(state, "cordon", 10, reason="fan")
    assert (state.service, state.reason, state.by, state.since) == ("cordoned", "fan", "root", 10)
    assert not state.usable
    state = _decided(state, "drain", 20, reason="kernel", grace_ms=500)
    assert (state.service, state.deadline) == ("draining", 520)
    state = _decided(state, "uncordon", 30)
    assert (state.service, state.reason, state.by, state.deadline) == ("ready", "", "", None)
    assert state.usable


def test_heartbeats_and_re_registration_leave_a_cordon_as_it_is() -> None:
    state = _decided(fold("n1", [_registered()]), "cordon", 10, reason="fan")
    evolve(state, NodeLost(id="l", actor="scheduler", node="n1", cluster="c1", last_seen=11))
    evolve(state, _registered(12))
    assert (state.service, state.alive, state.usable) == ("cordoned", True, False)


def test_a_node_that_never_registered_is_refused() -> None:
    with pytest.raises(NodeRefused, match="never registered"):
        decide(NodeState(name="ghost"), "cordon", actor="root", event_id="e", reason="x")


def test_a_negative_deadline_is_refused() -> None:
    state = fold("n1", [_registered()])
    with pytest.raises(NodeRefused, match="not a deadline"):
        decide(state, "drain", actor="root", event_id="e", grace_ms=-1)
