"""decide, rule by rule: the queue, placement, outcomes, retries, max_duration, nodes, delete."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from events import commands
from events.model import (
    AttemptCompleted,
    AttemptFailed,
    AttemptQueued,
    AttemptRunning,
    AttemptScheduled,
    AttemptStopped,
    AttemptTerminating,
    NodeLost,
    RankExited,
    Reason,
    RetryScheduled,
    RunDeleted,
)
from events.spec import Priority
from events.status import RunStatus as S
from services.scheduler.decision import Context
from services.scheduler.queue import queue_pass
from tests.unit.scheduler.world import ACTOR, USER, World

HOUR_MS = 3_600_000


def _queued(world: World, run_id: str) -> AttemptQueued:
    return world.events_of(run_id, AttemptQueued)[-1]  # type: ignore[no-any-return]


def _world(*nodes: str, gpus: int = 8) -> World:
    world = World()
    for node in nodes:
        world.register(node, gpus)
    return world


# --- the queue ------------------------------------------------------------------------------


def test_the_queue_is_ordered_by_priority_then_by_age() -> None:
    world = _world("n1")
    low = world.submit(8, priority="low")
    first = world.submit(8)
    second = world.submit(8)
    lowest = world.submit(8, priority="lowest")
    world.settle()

    assert world.status(first) is S.STARTING
    positions = {run: _queued(world, run).position for run in (second, low, lowest)}
    assert positions == {second: 1, low: 2, lowest: 3}

    order = []
    for _ in range(3):
        running = next(r for r in (first, second, low, lowest) if world.status(r) is S.STARTING)
        world.running(running)
        world.exit_all(running)
        world.settle()
        order.append(next(r for r in (second, low, lowest) if world.status(r) is S.STARTING))
    assert order == [second, low, lowest]


def test_a_waiting_attempt_reads_why_it_waits() -> None:
    world = _world("n1", "n2")
    world.submit(8)
    big = world.submit(16)
    world.settle()
    assert _queued(world, big).reason == "Insufficient resources: needs 16 GPUs, 8 free"
    assert _queued(world, big).position == 1
    queued = _queued(world, big)
    assert (queued.nodes, queued.gpus, queued.gpu_type) == (2, 16, "a100")  # what it means

    nowhere = world.submit(8, gpu_type="h100", cluster="empty")
    world.settle()
    assert _queued(world, nowhere).reason == "Waiting for nodes in cluster empty"


def test_no_usable_node_of_the_type_is_a_reason_to_wait() -> None:
    world = _world()
    world.register("h1", 8, "h100")
    world.settle(silent={"h1"})  # lost: it may come back
    run = world.submit(8, gpu_type="h100")
    world.settle()
    assert world.status(run) is S.QUEUED
    assert _queued(world, run).reason == (
        "Waiting for nodes: needs 1 node with 8 x h100, 0 up (the others are down)"
    )

    world.register("h1", 8, "h100")  # back again
    world.settle()
    assert world.status(run) is S.STARTING


def test_a_request_that_can_never_fit_fails_at_once_as_unschedulable() -> None:
    world = _world("n1")
    too_wide = world.submit(16, nodes=1)
    wrong_type = world.submit(8, gpu_type="h100")
    uneven = world.submit(12)
    too_many = world.submit(16)
    world.settle()
    for run_id, says in [
        (too_wide, "has 16 x a100 (the largest has 8)"),
        (wrong_type, "has gpu_type h100 (it has a100)"),
        (uneven, "12 GPUs do not fill whole 8-GPU nodes"),
        (too_many, "it needs 2 nodes with 8 x a100, the cluster has 1)"),
    ]:
        assert world.status(run_id) is S.FAILED
        [failed] = world.events_of(run_id, AttemptFailed)
        assert (failed.reason.category, failed.reason.code) == ("user", "Unschedulable")
        assert says in failed.reason.message
        assert not world.events_of(run_id, RetryScheduled)


def test_queueing_is_greedy_a_smaller_later_run_starts_while_a_larger_one_waits() -> None:
    world = _world("n1", "n2")
    world.submit(4)
    big = world.submit(16)
    small = world.submit(4)
    world.settle()
    assert world.status(big) is S.QUEUED
    assert world.status(small) is S.STARTING


def test_a_queued_attempt_is_told_again_only_when_the_kind_of_its_reason_changes() -> None:
    world = _world()
    run = world.submit(8, cluster="c1")
    world.settle()
    world.register("n1", 4)
    world.register("n2", 4)
    world.settle(silent={"n2"})  # lost: it may come back
    world.submit(1)
    world.settle()
    reasons = [event.reason for event in world.events_of(run, AttemptQueued)]
    assert reasons == [
        "Waiting for nodes in cluster c1",
        "Waiting for nodes: needs 2 nodes with 4 x a100, 1 up (the others are down)",
    ]
    world.submit(1)
    world.settle()
    assert len(world.events_of(run, AttemptQueued)) == 2  # counts moved, the kind did not


def test_a_multi_node_run_gets_distinct_nodes_and_a_cpu_run_no_gpus() -> None:
    world = _world("n1", "n2", "n3")
    wide = world.submit(16)
    cpu = world.submit(0)
    world.settle()
    [scheduled] = world.events_of(wide, AttemptScheduled)
    assert [rank.rank for rank in scheduled.ranks] == [0, 1]
    assert len({rank.node for rank in scheduled.ranks}) == 2
    assert world.placement(cpu)[0][1] == []


def test_placements_in_one_round_never_share_a_gpu() -> None:
    world = _world("n1", "n2")
    runs = [world.submit(1) for _ in range(20)]
    world.settle()
    held = world.held()
    assert len(held) == 16
    assert sum(world.status(r) is S.QUEUED for r in runs) == 4


# --- preemption -----------------------------------------------------------------------------


def test_a_higher_priority_run_preempts_a_lower_preemptible_one_which_is_retried() -> None:
    world = _world("n1")
    victim = world.submit(8, priority="low", preemptible=True)
    world.settle()
    world.running(victim)
    world.settle()
    urgent = world.submit(8)
    world.settle()

    [terminating] = world.events_of(victim, AttemptTerminating)
    assert terminating.reason is not None
    assert (terminating.reason.category, terminating.reason.code) == ("preempted", "Preempted")
    assert world.status(urgent) is S.QUEUED
    assert _queued(world, urgent).reason.startswith("Waiting for GPUs being released")

    world.exit_all(victim, 143)  # SIGTERM
    world.settle()
    [stopped] = world.events_of(victim, AttemptStopped)
    assert stopped.reason.code == "Preempted"
    [retry] = world.events_of(victim, RetryScheduled)
    assert (retry.cause, retry.attempt) == ("preempted", 1)
    assert world.status(urgent) is S.STARTING
    assert world.status(victim) is S.QUEUED  # attempt 1 waits for the GPUs


def test_a_preemption_unparks_the_classes_whose_outcome_it_may_change() -> None:
    world = _world("n1", "n2")
    victim = world.submit(8, priority="low", preemptible=True)
    world.submit(8)  # not preemptible
    world.settle()
    # One pass: the 16-GPU class waits (parked), the 8-GPU run preempts, the class is
    # walked again after it; every one of them is PENDING, so every one gets its entry.
    wide = [world.submit(16), world.submit(16)]
    urgent = world.submit(8)
    wide.append(world.submit(16))
    ctx = Context(world.now, world.new_id, ACTOR)
    same = copy.deepcopy(world.state)
    parked = queue_pass(world.state, "c1", ctx)
    walked = queue_pass(same, "c1", ctx, park=False)

    assert [(d.aggregate, [type(e) for e in d.events]) for d in parked] == [
        (f"run:{wide[0]}", [AttemptQueued]),
        (f"run:{wide[1]}", [AttemptQueued]),
        (f"run:{victim}", [AttemptTerminating]),
        (f"run:{urgent}", [AttemptQueued]),
        (f"run:{wide[2]}", [AttemptQueued]),
    ]
    queued = [e for d in parked for e in d.events if isinstance(e, AttemptQueued)]
    assert [(e.run_id, e.position) for e in queued] == [
        (wide[0], 1),
        (wide[1], 2),
        (urgent, 3),
        (wide[2], 4),
    ]
    assert queued[2].reason == "Waiting for GPUs being released: preempting 1 lower-priority run(s)"
    reasons = [[getattr(e, "reason", None) for e in d.events] for d in parked]
    assert reasons == [[getattr(e, "reason", None) for e in d.events] for d in walked]


def test_no_preemption_of_equal_priority_or_non_preemptible_runs() -> None:
    world = _world("n1", "n2")
    same = world.submit(8, preemptible=True)
    pinned = world.submit(8, priority="low")
    world.settle()
    waiting = world.submit(8)
    world.settle()
    assert world.status(waiting) is S.QUEUED
    assert not world.events_of(same, AttemptTerminating)
    assert not world.events_of(pinned, AttemptTerminating)


def test_a_priority_changed_while_running_is_the_one_preemption_judges_by() -> None:
    changes: list[tuple[Priority, Priority, bool]] = [
        ("lowest", "auto", False),
        ("auto", "lowest", True),
    ]
    for before, after, preempted in changes:
        world = _world("n1")
        running = world.submit(8, priority=before, preemptible=True)
        world.settle()
        world.command(running, commands.UpdateRun(actor=USER, priority=after))
        world.settle()
        world.submit(8, priority="low")
        world.settle()
        assert bool(world.events_of(running, AttemptTerminating)) is preempted, (before, after)


def test_preemption_stops_only_what_the_placement_needs() -> None:
    world = _world("n1", "n2")
    first = world.submit(8, priority="lowest", preemptible=True)
    second = world.submit(8, priority="lowest", preemptible=True)
    world.settle()
    world.submit(8, priority="low")
    world.settle()
    stopped = [r for r in (first, second) if world.events_of(r, AttemptTerminating)]
    assert len(stopped) == 1


# --- from STARTING to the outcome -----------------------------------------------------------


def test_every_rank_running_makes_the_attempt_running_and_clean_exits_complete_it() -> None:
    world = _world("n1", "n2")
    run = world.submit(16)
    world.settle()
    world.running(run)
    assert [type(e) for e in world.settle()] == [AttemptRunning]
    world.exit(run, 1, 0)
    [terminating] = world.settle()
    assert isinstance(terminating, AttemptTerminating)
    assert terminating.reason is None
    world.exit(run, 0, 0)
    assert [type(e) for e in world.settle()] == [AttemptCompleted]
    assert world.held() == {}


def test_the_first_failing_rank_gives_the_reason_and_the_first_failure_wins() -> None:
    world = _world("n1", "n2")
    run = world.submit(16)
    world.settle()
    world.running(run)
    world.settle()
    world.exit(run, 1, 3)
    world.settle()
    world.exit(run, 0, 137)
    world.settle()
    [failed] = world.events_of(run, AttemptFailed)
    assert failed.reason == Reason(
        category="user",
        code="Error",
        message="rank 1 exited with code 3",
        exit_code=3,
        failed_rank=1,
    )


def test_a_ranks_own_reason_is_kept_with_its_rank() -> None:
    world = _world("n1")
    run = world.submit(1)
    world.settle()
    pull = Reason(category="user", code="FailedImagePull", message="bad image")
    world.exit(run, 0, None, pull)
    events = world.settle()
    assert [type(e) for e in events] == [AttemptTerminating, AttemptFailed]
    [failed] = world.events_of(run, AttemptFailed)
    assert (failed.reason.code, failed.reason.failed_rank) == ("FailedImagePull", 0)


def test_a_clean_first_exit_then_a_failing_rank_fails_the_attempt() -> None:
    world = _world("n1", "n2")
    run = world.submit(16)
    world.settle()
    world.running(run)
    world.exit(run, 0, 0)
    world.settle()
    world.exit(run, 1, 2)
    world.settle()
    [failed] = world.events_of(run, AttemptFailed)
    assert (failed.reason.exit_code, failed.reason.failed_rank) == (2, 1)


def test_a_user_stop_ends_stopped_whatever_the_ranks_exit_with() -> None:
    world = _world("n1")
    run = world.submit(1, max_retries=3)
    world.settle()
    world.running(run)
    world.settle()
    world.command(run, commands.StopRun(actor=USER))
    world.exit(run, 0, 143)
    world.settle()
    [stopped] = world.events_of(run, AttemptStopped)
    assert stopped.reason.code == "Stopped"
    assert not world.events_of(run, RetryScheduled)


# --- retries --------------------------------------------------------------------------------


def test_user_failures_are_retried_while_max_retries_allows() -> None:
    world = _world("n1")
    run = world.submit(1, max_retries=2)
    for attempt in range(3):
        world.settle()
        assert world.oracle[run].latest.index == attempt
        world.running(run)
        world.exit(run, 0, 1)
    world.settle()
    retries = world.events_of(run, RetryScheduled)
    assert [(r.cause, r.attempt) for r in retries] == [("user_failure", 1), ("user_failure", 2)]
    assert world.status(run) is S.FAILED
    assert world.oracle[run].user_failures == 3


def test_system_failures_are_retried_only_with_retry_on_system_failure() -> None:
    world = _world("n1", "n2")
    retried = world.submit(8, retry_on_system_failure=True)
    not_retried = world.submit(8)
    world.settle()
    lost = Reason(category="system", code="RankLost")
    for run in (retried, not_retried):
        world.exit(run, 0, None, lost)
    world.settle()
    [retry] = world.events_of(retried, RetryScheduled)
    assert retry.cause == "system_failure"
    assert world.status(not_retried) is S.FAILED
    assert not world.events_of(not_retried, RetryScheduled)


# --- max_duration ---------------------------------------------------------------------------


def test_an_attempt_running_past_max_duration_is_stopped() -> None:
    world = _world("n1")
    run = world.submit(1, max_duration=0.5, max_retries=2)
    world.settle()
    world.running(run)
    world.settle()
    world.now += HOUR_MS // 2 - 100
    assert world.settle() == []
    world.now += 200
    [terminating] = world.settle()
    assert isinstance(terminating, AttemptTerminating)
    assert terminating.reason is not None
    assert (terminating.reason.category, terminating.reason.code) == (
        "stopped",
        "MaxDurationExceeded",
    )
    world.exit(run, 0, 143)
    world.settle()
    assert world.events_of(run, AttemptStopped)[0].reason.code == "MaxDurationExceeded"
    assert not world.events_of(run, RetryScheduled)


# --- nodes ----------------------------------------------------------------------------------


def test_a_lost_node_exits_its_ranks_fails_the_attempt_and_the_retry_goes_elsewhere() -> None:
    world = _world("n1", "n2")
    run = world.submit(8, retry_on_system_failure=True)
    world.settle()
    world.running(run)
    world.settle()
    [(node, _)] = world.placement(run)

    [lost] = world.step(silent={node})
    assert isinstance(lost, NodeLost)
    events = world.settle()
    assert [type(e) for e in events[:3]] == [RankExited, AttemptTerminating, AttemptFailed]
    exited = events[0]
    assert isinstance(exited, RankExited)
    assert exited.exit_code is None
    assert exited.reason is not None
    assert (exited.reason.category, exited.reason.code) == ("system", "NodeFailure")
    [retry] = world.events_of(run, RetryScheduled)
    assert retry.cause == "system_failure"
    assert world.status(run) is S.STARTING
    [(other, _)] = world.placement(run)
    assert other != node


def test_a_node_lost_while_terminating_only_releases_its_ranks() -> None:
    world = _world("n1")
    run = world.submit(1)
    world.settle()
    world.running(run)
    world.command(run, commands.StopRun(actor=USER))
    world.settle(silent={"n1"})
    assert world.status(run) is S.STOPPED


def test_a_drained_node_ends_its_attempts_and_takes_no_new_ones() -> None:
    world = _world("n1", "n2")
    run = world.submit(8)
    world.settle()
    [(node, _)] = world.placement(run)
    world.drain(node)
    [terminating] = world.settle()
    assert isinstance(terminating, AttemptTerminating)
    assert terminating.reason is not None
    assert (terminating.reason.category, terminating.reason.code) == ("system", "NodeDrained")
    world.exit(run, 0, 143)
    world.settle()
    others = [world.submit(8) for _ in range(2)]
    world.settle()
    assert sorted(world.status(r) for r in others) == [S.QUEUED, S.STARTING]
    assert all(world.placement(r)[0][0] != node for r in others if world.status(r) is S.STARTING)


def test_a_failed_gpu_ends_its_attempt_and_the_retry_avoids_it() -> None:
    world = _world("n1", gpus=4)
    run = world.submit(2, retry_on_system_failure=True)
    bystander = world.submit(2)
    world.settle()
    world.running(run)
    world.running(bystander)
    world.settle()
    [(node, gpus)] = world.placement(run)
    world.gpu_failed(node, gpus[1])
    [terminating] = world.settle()
    assert isinstance(terminating, AttemptTerminating)
    assert terminating.run_id == run
    assert terminating.reason == Reason(
        category="system",
        code="GpuFailure",
        message=f"Xid 79 on GPU {gpus[1]} (GPU-n1-{gpus[1]})",
        failed_rank=0,
    )
    world.exit(run, 0, 143)
    world.settle()
    assert world.events_of(run, RetryScheduled)
    # The retry waits: two GPUs are the bystander's, one failed; the healthy one is not enough.
    assert world.status(run) is S.QUEUED
    world.exit_all(bystander)
    world.settle()
    assert world.status(run) is S.STARTING
    assert gpus[1] not in world.placement(run)[0][1]
    assert world.status(bystander) is S.COMPLETED


def test_a_silence_most_nodes_share_declares_none_lost_and_places_nothing_on_them() -> None:
    world = _world("n1", "n2", "n3")
    run = world.submit(8, retry_on_system_failure=True)
    world.settle()
    world.running(run)
    world.settle()
    assert world.step(silent={"n1", "n2"}, watched=3, silent_share=0.55) == []
    assert world.status(run) is S.RUNNING
    other = world.submit(8)
    world.step(silent={"n1", "n2", "n3"}, watched=3, silent_share=0.55)
    assert world.status(other) is S.QUEUED  # placed on no silent node either


def test_one_silent_node_is_not_lost_while_most_others_are_about_to_be() -> None:
    # A shared outage stops every beat at once; the keys expire a beat interval apart.
    world = _world("n1", "n2", "n3")
    assert world.step(silent={"n1"}, watched=3, quiet=2, silent_share=0.55) == []
    [lost] = world.step(silent={"n1"}, watched=3, quiet=1, silent_share=0.55)
    assert isinstance(lost, NodeLost)


def test_one_silent_node_among_many_is_declared_lost() -> None:
    world = _world("n1", "n2", "n3")
    [lost] = world.step(silent={"n1"}, watched=3, silent_share=0.55)
    assert isinstance(lost, NodeLost)


def test_the_only_watched_node_silent_is_lost() -> None:
    world = _world("n1")
    [lost] = world.step(silent={"n1"}, watched=1, silent_share=0.55)
    assert isinstance(lost, NodeLost)


def test_a_silent_node_takes_no_placement_in_the_round_it_is_declared_lost() -> None:
    world = _world("n1")
    run = world.submit(1)
    events = world.step(silent={"n1"})
    assert [type(e) for e in events] == [NodeLost, AttemptQueued]
    assert world.status(run) is S.QUEUED


# --- delete ---------------------------------------------------------------------------------


def test_deleting_an_active_run_stops_it_then_deletes_it_without_a_retry() -> None:
    world = _world("n1")
    run = world.submit(1, max_retries=3)
    world.settle()
    world.running(run)
    world.settle()
    world.command(run, commands.DeleteRun(actor=USER))
    world.exit(run, 0, 1)
    events = world.settle()
    assert [type(e) for e in events] == [AttemptStopped, RunDeleted]
    assert events[1].actor == "scheduler@test"
    assert world.oracle[run].deleted


def test_deleting_while_terminating_deletes_after_the_attempt_ends() -> None:
    world = _world("n1")
    run = world.submit(1, retry_on_system_failure=True)
    world.settle()
    world.running(run)
    world.command(run, commands.StopRun(actor=USER))
    world.command(run, commands.DeleteRun(actor=USER))
    world.exit(run, 0, 143)
    assert [type(e) for e in world.settle()] == [AttemptStopped, RunDeleted]


def test_a_queued_attempt_without_its_judged_shape_is_queued_again_with_the_clusters_type() -> None:
    # Issue 18 item 6: an attempt queued without a shape (by an older scheduler, or before a node
    # of its cluster registered) showed the request, `2x gpu`, in `get runs` for as long as the
    # kind of its reason stayed the same.
    world = _world("n1", gpus=2)
    busy = world.submit(2)
    world.settle()
    run = world.submit(2)
    old = AttemptQueued(
        id=world.new_id(),
        actor="scheduler@old",
        run_id=run,
        reason="Insufficient resources: needs 2 GPUs, 0 free",
        position=1,
    )
    world.record([old])
    [again] = world.settle()
    assert isinstance(again, AttemptQueued)
    assert (again.nodes, again.gpus, again.gpu_type) == (1, 2, "a100")
    assert world.settle() == []  # once judged, told again only when its reason's kind changes
    assert world.status(busy) is S.STARTING


def test_a_placement_names_the_physical_gpus_by_uuid() -> None:
    world = World()
    world.register("n1", 4, gpu_uuids=[f"GPU-{i}" for i in range(4)])
    world.register("n0", 4)  # registered before GPUs had UUIDs in the log
    run = world.submit(8, nodes=2)
    world.settle()
    (scheduled,) = world.events_of(run, AttemptScheduled)
    by_node = {rank.node: rank for rank in scheduled.ranks}
    assert by_node["n1"].gpu_uuids == [f"GPU-{gpu}" for gpu in by_node["n1"].gpus]
    assert by_node["n0"].gpu_uuids == []


_EXITS = st.lists(
    st.tuples(
        st.sampled_from(["clean", "code 3", "stopped", "lost"]),  # how a rank ends
        st.booleans(),  # whether the scheduler takes a round before the next exit
    ),
    min_size=1,
    max_size=4,
)


@given(exits=_EXITS, stop_at=st.integers(min_value=-1, max_value=4))
@settings(max_examples=300, deadline=None)
def test_the_agents_rule_for_a_clean_last_exit_is_the_schedulers_outcome(
    exits: list[tuple[str, bool]], stop_at: int
) -> None:
    """``AttemptState.completes_with``, by which the last rank's report carries the end, says
    yes exactly where the scheduler, told of that exit alone, would write COMPLETED: the same
    events (TERMINATING with no reason unless the attempt is TERMINATING already)."""
    world = _world("n1", "n2", "n3", "n4")
    run = world.submit(8 * len(exits))
    world.settle()
    world.running(run)
    world.settle()
    stopping = Reason(category="stopped", code="Stopped", message="stopped by its user")
    for index, (ending, scheduler_round) in enumerate(exits):
        attempt = world.oracle[run].latest
        if attempt.status.is_terminal():
            return
        if index == stop_at and attempt.status in (S.STARTING, S.RUNNING):
            world.command(run, commands.StopRun(actor=USER))
            attempt = world.oracle[run].latest
        if ending == "clean":
            expected = attempt.completes_with(index)
            terminating = attempt.status is not S.TERMINATING
            world.exit(run, index, 0)
            decided = [type(e) for e in world.step()]
            ends = [AttemptTerminating, AttemptCompleted] if terminating else [AttemptCompleted]
            assert (decided == ends) is expected, (decided, attempt)
            continue
        code, reason = {"code 3": (3, None), "stopped": (None, stopping), "lost": (None, None)}[
            ending
        ]
        world.exit(run, index, code, reason)
        if scheduler_round:
            world.settle()
