"""Cordon, drain and uncordon as the scheduler honours them: no placements on a cordoned or
draining node, a drain's deadline on the log's clock, a re-registration that changes nothing."""

from __future__ import annotations

from events.model import AttemptFailed, AttemptQueued, AttemptTerminating, RetryScheduled
from events.status import RunStatus as S
from services.scheduler.cluster import ClusterState
from tests.unit.scheduler.world import World


def _world(*nodes: str, gpus: int = 8) -> World:
    world = World()
    for node in nodes:
        world.register(node, gpus)
    return world


def test_a_cordoned_node_takes_no_new_run_and_keeps_the_one_it_runs() -> None:
    world = _world("n1", "n2")
    first = world.submit(8)
    world.settle()
    [(busy, _)] = world.placement(first)
    world.running(first)
    world.settle()
    other = "n2" if busy == "n1" else "n1"
    world.cordon(other)
    second = world.submit(8)
    assert not [e for e in world.settle() if isinstance(e, AttemptTerminating)]
    assert world.status(first) is S.RUNNING
    assert world.status(second) is S.QUEUED
    world.uncordon(other)
    world.settle()
    assert world.status(second) is S.STARTING
    assert world.placement(second)[0][0] == other


def test_a_run_only_a_cordoned_node_could_take_says_so() -> None:
    world = _world("n1")
    world.cordon("n1", "bad fan")
    run = world.submit(8)
    world.settle()
    [queued] = world.events_of(run, AttemptQueued)
    assert queued.reason.startswith("Waiting for cordoned nodes: needs 1 node with 8 x a100")
    assert world.status(run) is S.QUEUED


def test_a_re_registration_does_not_uncordon() -> None:
    world = _world("n1")
    world.cordon("n1")
    world.register("n1")  # the agent restarted
    run = world.submit(1)
    world.settle()
    assert world.status(run) is S.QUEUED
    assert world.state.nodes["n1"].service.service == "cordoned"


def test_a_drain_without_deadline_lets_attempts_end_by_themselves() -> None:
    world = _world("n1", "n2")
    run = world.submit(8)
    world.settle()
    world.running(run)
    world.settle()
    [(node, _)] = world.placement(run)
    world.drain_request(node)
    world.now += 10 * 3_600_000
    assert world.settle() == []
    assert world.status(run) is S.RUNNING


def test_a_drain_stops_what_runs_at_its_deadline_and_the_retry_goes_elsewhere() -> None:
    world = _world("n1", "n2")
    run = world.submit(8, retry_on_system_failure=True)
    world.settle()
    world.running(run)
    world.settle()
    [(node, _)] = world.placement(run)
    world.drain_request(node, "kernel upgrade", grace_ms=60_000)
    assert world.settle() == []  # before the deadline: it runs on
    world.now += 60_000
    [terminating] = world.settle()
    assert isinstance(terminating, AttemptTerminating)
    assert terminating.reason is not None
    assert (terminating.reason.category, terminating.reason.code) == ("system", "NodeDrained")
    assert "kernel upgrade" in terminating.reason.message
    assert "admin" in terminating.reason.message
    world.exit(run, 0, 143)
    appended = world.settle()
    assert any(isinstance(e, AttemptFailed) for e in appended)
    assert any(isinstance(e, RetryScheduled) and e.cause == "system_failure" for e in appended)
    assert world.status(run) is S.STARTING
    assert world.placement(run)[0][0] != node


def test_a_drain_deadline_survives_a_scheduler_restart() -> None:
    world = _world("n1", "n2")
    run = world.submit(8)
    world.settle()
    world.running(run)
    world.settle()
    [(node, _)] = world.placement(run)
    world.drain_request(node, grace_ms=1_000)
    world.settle()
    fresh = ClusterState()  # a new scheduler replays the log
    for record in world.records:
        fresh.apply(record)
    world.state = fresh
    world.now += 1_000
    [terminating] = world.settle()
    assert isinstance(terminating, AttemptTerminating)


def test_uncordon_ends_a_drain_before_its_deadline() -> None:
    world = _world("n1")
    run = world.submit(8)
    world.settle()
    world.running(run)
    world.settle()
    world.drain_request("n1", grace_ms=1_000)
    world.uncordon("n1")
    world.now += 5_000
    assert world.settle() == []
    assert world.status(run) is S.RUNNING
    assert world.state.drains == {}


def test_a_run_that_fits_only_on_a_cordoned_nodes_free_gpus_says_so() -> None:
    world = _world("n1", "n2")
    world.cordon("n2")
    busy = world.submit(8)
    world.settle()
    assert world.placement(busy)[0][0] == "n1"
    waits = world.submit(8)
    world.settle()
    [queued] = world.events_of(waits, AttemptQueued)
    assert queued.reason.startswith("Waiting for cordoned nodes: needs 1 node with 8 x a100")
    both = world.submit(16)  # needs both nodes: n2 is cordoned, not down
    world.settle()
    [queued] = world.events_of(both, AttemptQueued)
    assert queued.reason.startswith("Waiting for cordoned nodes: needs 2 nodes with 8 x a100")
    world.uncordon("n2")
    world.settle()
    [*_, queued] = world.events_of(both, AttemptQueued)
    assert queued.reason.startswith("Insufficient resources")
