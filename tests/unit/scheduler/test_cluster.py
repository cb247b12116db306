"""The scheduler's state: applied once per version, gaps reloaded, GPUs derived, runs forgotten."""

from __future__ import annotations

from events import commands
from events.codec import Recorded
from events.model import AttemptScheduled, KeyRevoked, UserAdded
from services.scheduler.cluster import Applied, ClusterState
from tests.unit.scheduler.world import World


def _replay(records: list[Recorded]) -> ClusterState:
    state = ClusterState()
    for record in records:
        assert state.apply(record) is Applied.APPLIED
    return state


def _log(world: World) -> list[Recorded]:
    return list(world.records)


def _busy_world() -> tuple[World, str, str]:
    world = World()
    world.register("n1")
    world.register("n2")
    running = world.submit(8)
    done = world.submit(4)
    world.settle()
    world.running(running)
    world.settle()
    world.exit_all(done)
    world.settle()
    return world, running, done


def test_an_event_already_folded_is_skipped_and_a_gap_is_reported() -> None:
    world, _, _ = _busy_world()
    records = _log(world)
    state = _replay(records)
    assert all(state.apply(record) is Applied.SKIPPED for record in records)

    run_events = [r for r in records if r.event.aggregate.startswith("run:")]
    last = run_events[-1]
    fresh = ClusterState()
    assert fresh.apply(last) is Applied.GAP


def test_users_and_keys_in_the_log_are_no_concern_of_the_scheduler() -> None:
    world, _, _ = _busy_world()
    state = _replay(_log(world))
    before = (dict(state.used), set(state.runs))
    events: list[UserAdded | KeyRevoked] = [
        UserAdded(id="u1", actor="root", user="alice", role="user", time=1),
        KeyRevoked(id="u2", actor="root", user="alice", key_id="abcd1234efgh", time=2),
    ]
    for version, event in enumerate(events, start=1):
        assert state.apply(Recorded(f"{version}-0", version, event)) is Applied.SKIPPED
    assert (dict(state.used), set(state.runs)) == before


def test_a_replay_rebuilds_the_same_allocations() -> None:
    world, running, done = _busy_world()
    state = _replay(_log(world))
    state.drop_settled()
    assert state.used == world.state.used
    assert set(state.runs) == {running}
    assert done in state.settled


def test_a_gap_is_healed_by_reloading_the_aggregates_history() -> None:
    world, running, _ = _busy_world()
    records = _log(world)
    mine = [r for r in records if r.event.aggregate == f"run:{running}"]
    state = _replay([r for r in records if r not in mine[2:]])
    assert state.apply(mine[-1]) is Applied.GAP
    state.reload(f"run:{running}", mine)
    assert state.runs[running].version == len(mine)
    assert state.used == world.state.used


def test_a_restart_of_a_forgotten_run_is_a_gap_and_its_history_brings_it_back() -> None:
    world, _, done = _busy_world()
    state = _replay(_log(world))
    state.drop_settled()
    assert done not in state.runs
    world.command(done, commands.RestartRun(actor="alice"))
    restart = _log(world)[-1]
    assert state.apply(restart) is Applied.GAP
    state.reload(f"run:{done}", [r for r in _log(world) if r.event.aggregate == f"run:{done}"])
    assert state.runs[done].latest.index == 1
    assert done in state.queue("c1")
    assert world.state.runs[done].latest.index == 1  # the world's edge reloaded it too


def test_an_attempt_holds_its_gpus_until_it_leaves_terminating() -> None:
    world = World()
    world.register("n1")
    run = world.submit(8)
    world.settle()
    world.running(run)
    world.exit(run, 0, 0)
    assert set(world.state.used["n1"]) == set(range(8))
    world.settle()
    assert world.state.used["n1"] == {}


def test_nodes_registered_before_activation_get_a_grace() -> None:
    world = World()
    world.register("n1")
    registered = world.now
    state = world.state
    state.active_since = registered + 5_000
    assert state.watched_nodes(registered + 9_000, timeout_ms=10_000) == []
    assert state.watched_nodes(registered + 15_000, timeout_ms=10_000) == ["n1"]


def test_a_heartbeat_key_is_asked_about_again_once_it_is_not_sure_to_last() -> None:
    world = World()
    world.register("n1")
    world.register("n2")
    state, now = world.state, world.now
    assert state.unsure(["n1", "n2"], now) == ["n1", "n2"]  # never read
    state.saw([("n1", 20_000), ("n2", -1)], now)  # n2's key has no expiry: never sure
    assert state.unsure(["n1", "n2"], now + 20_000) == ["n2"]
    assert state.unsure(["n1", "n2"], now + 20_001) == ["n1", "n2"]
    state.saw([("n1", None)], now + 1_000)  # seen, its expiry not read: what was known stays
    assert (state.nodes["n1"].last_seen, state.unsure(["n1"], now + 20_000)) == (now + 1_000, [])
    world.register("n1")  # its agent started again, maybe with another expiry
    assert state.unsure(["n1"], now) == ["n1"]


def test_a_scheduled_event_that_reuses_a_held_gpu_is_recorded_as_double_booked() -> None:
    world = World()
    world.register("n1")
    first = world.submit(8)
    second = world.submit(8)
    world.settle()
    [scheduled] = world.events_of(first, AttemptScheduled)
    forged = AttemptScheduled(
        id="forged", actor="rogue", run_id=second, cluster="c1", ranks=scheduled.ranks
    )
    world.record([forged])
    assert world.state.double_booked == [("n1", gpu) for gpu in range(8)]
