"""The lifecycle rules: examples of each rule, then random walks over everything they allow.

The walk starts from nothing and, at each state, offers every event of a fixed menu of
candidates (every kind, with plausible and implausible parameters: wrong attempts, missing
ranks, broken placements). Each candidate is tried on a copy, which also checks that a refusal
is an ``IllegalTransition`` and changes nothing. The walk then takes one of the accepted ones: a
kind first, uniformly among the kinds with an accepted candidate, then an event of that kind, so
the requests that are almost always accepted (update, stop) and a rank's setup steps (image
pull, integrations: one kind here) do not crowd out the lifecycle itself. Half the steps choose
only among the events that move the run on, or the walks would mostly end in an early stop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import model as ev
from events.codec import decode, encode
from events.errors import IllegalTransition
from events.lifecycle import RunState, copy_state, evolve, fold
from events.status import RunStatus
from tests.factories import spec

S = RunStatus
RUN = "run-1"
USER = "alice@example.com"
SCHEDULER = "scheduler@test"
AGENT = "agent@node-a"

USER_ERROR = ev.Reason(category="user", code="Error", exit_code=1, failed_rank=0)
NODE_FAILURE = ev.Reason(category="system", code="NodeFailure", message="node-b stopped answering")
STOPPED_BY_USER = ev.Reason(category="stopped", code="StoppedByUser")
PREEMPTED = ev.Reason(category="preempted", code="Preempted")

# --- builders -----------------------------------------------------------------------------

_ids = itertools.count()


def new_id() -> str:
    return f"e{next(_ids)}"  # unique is all the rules need; uuid4 would slow the walks


def submitted(attempt: int = 0) -> ev.RunSubmitted:
    return ev.RunSubmitted(
        id=new_id(),
        actor=USER,
        run_id=RUN,
        attempt=attempt,
        name="hello-vc5nfs",
        spec=spec(gpus=4, nodes=2),
    )


def placement(n: int, gpus: Iterable[int] = (0, 1, 2, 3)) -> list[ev.RankPlacement]:
    """``n`` ranks on node-a, node-b, ..., each holding ``gpus``."""
    return [
        ev.RankPlacement(rank=r, node=f"node-{chr(ord('a') + r)}", gpus=list(gpus))
        for r in range(n)
    ]


def queued(a: int = 0) -> ev.AttemptQueued:
    return ev.AttemptQueued(id=new_id(), actor=SCHEDULER, run_id=RUN, attempt=a, position=1)


def scheduled(a: int = 0, ranks: list[ev.RankPlacement] | None = None) -> ev.AttemptScheduled:
    return ev.AttemptScheduled(
        id=new_id(),
        actor=SCHEDULER,
        run_id=RUN,
        attempt=a,
        cluster="local",
        gpu_type="a100_80gb",
        ranks=placement(2) if ranks is None else ranks,
    )


def node_of(rank: int) -> str:
    return f"node-{chr(ord('a') + rank)}"


def rank_running(rank: int, a: int = 0) -> ev.RankRunning:
    return ev.RankRunning(
        id=new_id(), actor=AGENT, run_id=RUN, attempt=a, rank=rank, node=node_of(rank), pid=100
    )


def attempt_running(a: int = 0) -> ev.AttemptRunning:
    return ev.AttemptRunning(id=new_id(), actor=SCHEDULER, run_id=RUN, attempt=a)


def rank_exited(
    rank: int, a: int = 0, exit_code: int | None = 0, reason: ev.Reason | None = None
) -> ev.RankExited:
    return ev.RankExited(
        id=new_id(),
        actor=AGENT,
        run_id=RUN,
        attempt=a,
        rank=rank,
        node=node_of(rank),
        exit_code=exit_code,
        reason=reason,
    )


def terminating(a: int = 0, reason: ev.Reason | None = None) -> ev.AttemptTerminating:
    return ev.AttemptTerminating(id=new_id(), actor=SCHEDULER, run_id=RUN, attempt=a, reason=reason)


def completed(a: int = 0) -> ev.AttemptCompleted:
    return ev.AttemptCompleted(id=new_id(), actor=SCHEDULER, run_id=RUN, attempt=a)


def stopped(a: int = 0, reason: ev.Reason = STOPPED_BY_USER) -> ev.AttemptStopped:
    return ev.AttemptStopped(id=new_id(), actor=SCHEDULER, run_id=RUN, attempt=a, reason=reason)


def failed(a: int = 0, reason: ev.Reason = USER_ERROR) -> ev.AttemptFailed:
    return ev.AttemptFailed(id=new_id(), actor=SCHEDULER, run_id=RUN, attempt=a, reason=reason)


def stop(a: int = 0) -> ev.StopRequested:
    return ev.StopRequested(id=new_id(), actor=USER, run_id=RUN, attempt=a, reason="by hand")


def restart(a: int) -> ev.RestartRequested:
    return ev.RestartRequested(id=new_id(), actor=USER, run_id=RUN, attempt=a)


def retry(
    a: int, cause: Literal["user_failure", "system_failure", "preempted"] = "system_failure"
) -> ev.RetryScheduled:
    return ev.RetryScheduled(id=new_id(), actor=SCHEDULER, run_id=RUN, attempt=a, cause=cause)


def update(**changes: Any) -> ev.UpdateRequested:
    return ev.UpdateRequested(id=new_id(), actor=USER, run_id=RUN, **changes)


def delete() -> ev.DeleteRequested:
    return ev.DeleteRequested(id=new_id(), actor=USER, run_id=RUN)


def deleted() -> ev.RunDeleted:
    return ev.RunDeleted(id=new_id(), actor=SCHEDULER, run_id=RUN)


def stamp(
    events: list[ev.AnyRunEvent], start: int = 1000, step: int = 1000
) -> list[ev.AnyRunEvent]:
    """Give the events the log's times, as the log would: increasing, from ``start``."""
    for i, event in enumerate(events):
        event.time = start + i * step
    return events


def path(a: int, to: RunStatus) -> list[ev.AnyRunEvent]:
    """The events that take attempt ``a``, once open, to ``to`` (two ranks)."""
    start: list[ev.AnyRunEvent] = [queued(a), scheduled(a), rank_running(0, a), rank_running(1, a)]
    paths: dict[RunStatus, list[ev.AnyRunEvent]] = {
        S.PENDING: [],
        S.QUEUED: [queued(a)],
        S.STARTING: [queued(a), scheduled(a)],
        S.RUNNING: [*start, attempt_running(a)],
        S.TERMINATING: [*start, attempt_running(a), terminating(a)],
        S.COMPLETED: [
            *start,
            attempt_running(a),
            rank_exited(0, a),
            rank_exited(1, a),
            terminating(a),
            completed(a),
        ],
        S.STOPPED: [
            *start,
            attempt_running(a),
            terminating(a, STOPPED_BY_USER),
            rank_exited(0, a, None),
            rank_exited(1, a, None),
            stopped(a),
        ],
        S.FAILED: [
            *start,
            attempt_running(a),
            rank_exited(0, a, 1, USER_ERROR),
            terminating(a, USER_ERROR),
            rank_exited(1, a, None),
            failed(a),
        ],
    }
    return paths[to]


def run(*events: ev.AnyRunEvent) -> RunState:
    state = fold(stamp(list(events)))
    assert state is not None
    return state


def at(to: RunStatus) -> RunState:
    """A run whose attempt 0 is at ``to``."""
    return run(submitted(), *path(0, to))


def refused(state: RunState, event: ev.AnyRunEvent, why: str = "") -> IllegalTransition:
    """Assert ``event`` is refused because of ``why`` and leaves ``state`` as it was."""
    before = msgspec.to_builtins(state)
    with pytest.raises(IllegalTransition) as caught:
        evolve(state, event)
    assert why in caught.value.why
    assert caught.value.aggregate == f"run:{RUN}"
    assert caught.value.event_type == ev.tag_of(type(event))
    assert msgspec.to_builtins(state) == before
    return caught.value


TERMINAL = [S.COMPLETED, S.STOPPED, S.FAILED]
NOT_TERMINAL = [S.PENDING, S.QUEUED, S.STARTING, S.RUNNING, S.TERMINATING]

# --- one attempt, start to end --------------------------------------------------------------


def test_the_happy_path_of_one_attempt() -> None:
    steps: list[tuple[ev.AnyRunEvent, RunStatus]] = [
        (submitted(), S.PENDING),
        (queued(), S.QUEUED),
        (scheduled(ranks=placement(2)), S.STARTING),
        (rank_running(0), S.STARTING),
        (rank_running(1), S.STARTING),
        (attempt_running(), S.RUNNING),
        (rank_exited(0), S.RUNNING),
        (rank_exited(1), S.RUNNING),
        (terminating(), S.TERMINATING),
        (completed(), S.COMPLETED),
    ]
    stamp([event for event, _ in steps])
    state: RunState | None = None
    for i, (event, status) in enumerate(steps, start=1):
        state = evolve(state, event)
        assert state.status is status, f"after {ev.tag_of(type(event))}"
        assert state.version == i
        assert state.latest.gpus == (8 if status >= S.STARTING else 0)
    assert state is not None
    assert (state.run_id, state.name, state.created_by, state.created_at) == (
        RUN,
        "hello-vc5nfs",
        USER,
        1000,
    )
    assert len(state.attempts) == 1
    attempt = state.latest
    assert attempt.timeline == [
        (S.PENDING, 1000),
        (S.QUEUED, 2000),
        (S.STARTING, 3000),
        (S.RUNNING, 6000),
        (S.TERMINATING, 9000),
        (S.COMPLETED, 10000),
    ]
    assert (attempt.cluster, attempt.gpu_type, attempt.gpus) == ("local", "a100_80gb", 8)
    assert [(r.rank, r.node, r.gpus) for r in attempt.ranks] == [
        (0, "node-a", [0, 1, 2, 3]),
        (1, "node-b", [0, 1, 2, 3]),
    ]
    assert all(r.running and r.exited and r.exit_code == 0 for r in attempt.ranks)
    assert attempt.reason is None
    assert state.user_failures == 0
    assert not state.deleted


def test_queued_again_keeps_one_timeline_entry() -> None:
    state = run(submitted(), queued(), queued())
    assert [status for status, _ in state.latest.timeline] == [S.PENDING, S.QUEUED]
    assert state.latest.timeline[1][1] == 2000


def test_a_run_starts_with_its_submission_at_attempt_zero() -> None:
    with pytest.raises(IllegalTransition, match="the run does not exist"):
        evolve(None, queued())
    with pytest.raises(IllegalTransition, match="a run starts at attempt 0"):
        evolve(None, submitted(attempt=1))
    refused(at(S.PENDING), submitted(), "the run exists already")


def test_an_attempt_that_failed_while_terminating_keeps_the_ranks_reasons() -> None:
    state = at(S.FAILED)
    assert state.latest.reason == USER_ERROR
    assert state.latest.ranks[0].reason == USER_ERROR
    assert state.latest.ranks[0].exit_code == 1
    assert state.latest.ranks[1].exit_code is None


# --- restarts and retries -------------------------------------------------------------------


@pytest.mark.parametrize("opener", [restart, retry])
@pytest.mark.parametrize("status", NOT_TERMINAL)
def test_a_new_attempt_waits_for_the_latest_to_end(opener: Any, status: RunStatus) -> None:
    refused(at(status), opener(1), f"attempt 0 is still {status.display_name}")


@pytest.mark.parametrize("status", TERMINAL)
def test_a_restart_opens_a_new_attempt_after_the_latest_ended(status: RunStatus) -> None:
    state = at(status)
    before = copy_state(state)
    event = restart(1)
    event.time = 99_000
    evolve(state, event)
    assert [a.index for a in state.attempts] == [0, 1]
    assert state.status is S.PENDING
    assert state.latest.timeline == [(S.PENDING, 99_000)]
    assert state.latest.opened_by == event.actor
    assert state.latest.ranks == []
    assert state.attempts[0] == before.attempts[0], "the ended attempt is kept as it was"


def test_a_retry_follows_the_kind_of_end_it_names() -> None:
    failed_by_user = at(S.FAILED)  # USER_ERROR
    evolve(copy_state(failed_by_user), retry(1, "user_failure"))
    refused(failed_by_user, retry(1, "system_failure"), "not Failed (user)")
    refused(failed_by_user, retry(1, "preempted"), "not Failed (user)")
    refused(at(S.COMPLETED), retry(1, "user_failure"), "not Completed (None)")
    refused(at(S.STOPPED), retry(1, "preempted"), "not Stopped (stopped)")


@pytest.mark.parametrize("opener", [restart, retry])
@pytest.mark.parametrize("index", [-1, 0, 2, 3])
def test_the_new_attempt_is_exactly_the_next_one(opener: Any, index: int) -> None:
    refused(at(S.COMPLETED), opener(index), f"the next attempt is 1, not {index}")


def test_attempts_follow_one_another() -> None:
    state = run(
        submitted(),
        *path(0, S.FAILED),
        retry(1, "user_failure"),
        *path(1, S.STOPPED),
        restart(2),
        *path(2, S.COMPLETED),
    )
    assert [(a.index, a.status) for a in state.attempts] == [
        (0, S.FAILED),
        (1, S.STOPPED),
        (2, S.COMPLETED),
    ]
    refused(state, restart(2), "the next attempt is 3, not 2")


# --- events of another attempt ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        stop,
        queued,
        scheduled,
        lambda a: rank_running(0, a),
        attempt_running,
        lambda a: rank_exited(0, a),
        terminating,
        completed,
        stopped,
        failed,
        lambda a: ev.ImagePullStarted(
            id=new_id(), actor=AGENT, run_id=RUN, attempt=a, rank=0, node="node-a", image="img"
        ),
    ],
)
@pytest.mark.parametrize("other", [0, 2, -1])
def test_events_of_an_attempt_other_than_the_current_are_refused(make: Any, other: int) -> None:
    state = run(submitted(), *path(0, S.COMPLETED), restart(1), *path(1, S.RUNNING))
    refused(state, make(other), f"attempt {other} is not the current attempt (1)")


# --- stop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", TERMINAL)
def test_stop_of_a_terminal_attempt_is_refused_naming_its_status(status: RunStatus) -> None:
    error = refused(at(status), stop(), f"attempt 0 is already {status.display_name}")
    assert status.display_name in str(error)


def test_stop_of_a_terminating_attempt_is_refused() -> None:
    refused(at(S.TERMINATING), stop(), "attempt 0 is already Terminating")


@pytest.mark.parametrize("status", [S.PENDING, S.QUEUED])
def test_a_waiting_attempt_stops_at_once(status: RunStatus) -> None:
    state = run(submitted(), *path(0, status), stop(), stopped())
    assert state.status is S.STOPPED
    assert state.latest.stop_requested_by == USER
    assert state.latest.reason == STOPPED_BY_USER
    waited = [S.PENDING] if status is S.PENDING else [S.PENDING, S.QUEUED]
    assert [s for s, _ in state.latest.timeline] == [*waited, S.STOPPED]
    assert state.latest.gpus == 0


@pytest.mark.parametrize("status", [S.PENDING, S.QUEUED])
def test_a_waiting_attempt_may_fail_at_once(status: RunStatus) -> None:
    state = at(status)
    evolve(state, failed(reason=NODE_FAILURE))
    assert state.status is S.FAILED
    assert state.user_failures == 0


@pytest.mark.parametrize("status", [S.STARTING, S.RUNNING])
def test_an_attempt_holding_gpus_is_stopped_through_terminating(status: RunStatus) -> None:
    state = at(status)
    evolve(state, stop())
    assert state.latest.stop_requested_by == USER
    refused(state, stopped(), f"attempt 0 is {status.display_name}")
    state = run(
        submitted(),
        *path(0, status),
        stop(),
        terminating(reason=STOPPED_BY_USER),
        rank_exited(0, exit_code=None),
        rank_exited(1, exit_code=None),
        stopped(),
    )
    statuses = [s for s, _ in state.latest.timeline]
    assert statuses[-2:] == [S.TERMINATING, S.STOPPED]


# --- ending ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.PENDING, S.QUEUED])
def test_a_waiting_attempt_cannot_complete(status: RunStatus) -> None:
    refused(at(status), completed(), f"attempt 0 is {status.display_name}")


@pytest.mark.parametrize("end", [completed, stopped, failed])
@pytest.mark.parametrize("status", [S.STARTING, S.RUNNING])
def test_an_attempt_holding_gpus_ends_only_through_terminating(end: Any, status: RunStatus) -> None:
    refused(at(status), end(), f"attempt 0 is {status.display_name}")


@pytest.mark.parametrize("end", [completed, stopped, failed])
def test_an_attempt_ends_only_when_every_rank_released_its_gpus(end: Any) -> None:
    state = at(S.TERMINATING)
    refused(state, end(), "a rank still holds its GPUs")
    evolve(state, rank_exited(1))
    refused(state, end(), "a rank still holds its GPUs")
    evolve(state, rank_exited(0))
    evolve(state, end())
    assert state.status.is_terminal()


@pytest.mark.parametrize("end", [completed, stopped, failed])
@pytest.mark.parametrize("status", TERMINAL)
def test_an_ended_attempt_ends_once(end: Any, status: RunStatus) -> None:
    refused(at(status), end(), f"attempt 0 is {status.display_name}")


def test_attempt_running_waits_for_every_rank() -> None:
    state = at(S.STARTING)
    refused(state, attempt_running(), "not every rank runs yet")
    evolve(state, rank_running(0))
    refused(state, attempt_running(), "not every rank runs yet")
    evolve(state, rank_running(1))
    evolve(state, attempt_running())
    assert state.status is S.RUNNING


def test_a_rank_runs_once_and_exits_once() -> None:
    state = run(submitted(), queued(), scheduled(), rank_running(0))
    refused(state, rank_running(0), "rank 0 runs already")
    evolve(state, rank_exited(0))
    refused(state, rank_exited(0), "rank 0 has exited")
    refused(state, rank_running(0), "rank 0 has exited")
    refused(state, rank_running(2), "attempt 0 has no rank 2")
    refused(state, rank_running(-1), "attempt 0 has no rank -1")


@pytest.mark.parametrize("status", [S.PENDING, S.QUEUED, *TERMINAL])
def test_rank_events_need_an_attempt_holding_gpus(status: RunStatus) -> None:
    refused(at(status), rank_running(0), f"attempt 0 is {status.display_name}")
    refused(at(status), rank_exited(0), f"attempt 0 is {status.display_name}")


# --- placement ------------------------------------------------------------------------------


def rp(rank: int, node: str, gpus: list[int]) -> ev.RankPlacement:
    return ev.RankPlacement(rank=rank, node=node, gpus=gpus)


@pytest.mark.parametrize(
    ("ranks", "why"),
    [
        pytest.param([], "at least one rank", id="no-rank"),
        pytest.param([rp(1, "a", [0])], "numbered 0..n-1", id="starts-at-1"),
        pytest.param([rp(0, "a", [0]), rp(2, "b", [0])], "numbered 0..n-1", id="gap"),
        pytest.param([rp(1, "a", [0]), rp(0, "b", [0])], "numbered 0..n-1", id="out-of-order"),
        pytest.param([rp(0, "a", [0]), rp(0, "b", [0])], "numbered 0..n-1", id="duplicate-rank"),
        pytest.param([rp(0, "a", [0]), rp(1, "a", [1])], "its own node", id="shared-node"),
        pytest.param([rp(0, "a", [0, 1, 0])], "each GPU once", id="duplicate-gpu"),
    ],
)
def test_a_broken_placement_is_refused(ranks: list[ev.RankPlacement], why: str) -> None:
    refused(at(S.QUEUED), scheduled(ranks=ranks), why)


def test_ranks_on_different_nodes_may_use_the_same_gpu_indices() -> None:
    state = at(S.QUEUED)
    evolve(state, scheduled(ranks=[rp(0, "a", [0, 1]), rp(1, "b", [0, 1]), rp(2, "c", [7])]))
    assert state.latest.gpus == 5


@pytest.mark.parametrize("status", [S.PENDING, S.STARTING, S.RUNNING, *TERMINAL])
def test_only_a_queued_attempt_is_scheduled(status: RunStatus) -> None:
    refused(at(status), scheduled(), f"attempt 0 is {status.display_name}")


# --- update, delete -------------------------------------------------------------------------


def test_update_changes_only_the_fields_it_names() -> None:
    state = at(S.RUNNING)
    evolve(state, update(max_retries=3, priority="low"))
    evolve(state, update(preemptible=True, max_duration=1.5))
    evolve(state, update(retry_on_system_failure=True, max_retries=0))
    scheduling = state.spec.scheduling
    assert (scheduling.priority, scheduling.preemptible, scheduling.max_retries) == ("low", True, 0)
    assert (scheduling.retry_on_system_failure, scheduling.max_duration) == (True, 1.5)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"max_retries": -1}, "max_retries must not be negative"),
        ({"max_retries": -1, "priority": "low"}, "max_retries must not be negative"),
        ({"max_duration": 0.0}, "positive number of hours"),
        ({"max_duration": -2.0}, "positive number of hours"),
    ],
)
def test_update_with_bad_values_is_refused(changes: dict[str, Any], why: str) -> None:
    refused(at(S.QUEUED), update(**changes), why)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_update_with_a_non_finite_max_duration_is_refused(value: float) -> None:
    refused(at(S.QUEUED), update(max_duration=value), "positive number of hours")


def test_delete_of_an_active_run_waits_for_its_end() -> None:
    state = at(S.RUNNING)
    refused(state, deleted(), "after its delete request and latest attempt end")
    evolve(state, delete())
    assert state.delete_requested
    refused(state, delete(), "being deleted already")
    refused(state, deleted(), "after its delete request and latest attempt end")
    winding_down: list[ev.AnyRunEvent] = [terminating(reason=STOPPED_BY_USER), rank_exited(0)]
    for event in [*winding_down, rank_exited(1)]:
        evolve(state, event)
    refused(state, deleted(), "after its delete request and latest attempt end")
    evolve(state, stopped())
    refused(state, restart(1), "the run is being deleted")
    refused(state, retry(1), "the run is being deleted")
    evolve(state, deleted())
    assert state.deleted


@pytest.mark.parametrize("status", TERMINAL)
def test_an_ended_run_is_deleted_only_after_its_delete_request(status: RunStatus) -> None:
    state = at(status)
    refused(state, deleted(), "after its delete request")
    evolve(state, delete())
    evolve(state, deleted())
    assert state.deleted


@pytest.mark.parametrize(
    "make",
    [
        submitted,
        lambda: restart(1),
        lambda: retry(1),
        stop,
        lambda: update(max_retries=1),
        delete,
        deleted,
        queued,
        completed,
    ],
)
def test_a_deleted_run_accepts_nothing(make: Any) -> None:
    state = run(submitted(), stop(), stopped(), delete(), deleted())
    refused(state, make(), "the run is deleted")


# --- counters -------------------------------------------------------------------------------


def test_user_failures_are_counted_across_attempts() -> None:
    state = run(submitted(), *path(0, S.FAILED), retry(1, "user_failure"))
    assert state.user_failures == 1
    for event in [*path(1, S.TERMINATING), rank_exited(0, 1), rank_exited(1, 1)]:
        evolve(state, event)
    evolve(state, failed(1, NODE_FAILURE))
    assert state.user_failures == 1, "a system failure is not the user's"
    later: list[ev.AnyRunEvent] = [
        retry(2),
        queued(2),
        failed(2, USER_ERROR),
        restart(3),
        stopped(3),
    ]
    for event in later:
        evolve(state, event)
    assert state.user_failures == 2
    assert [a.status for a in state.attempts] == [S.FAILED, S.FAILED, S.FAILED, S.STOPPED]


# --- known faults ---------------------------------------------------------------------------


def test_folding_does_not_change_the_events() -> None:
    events = stamp([submitted(), update(max_retries=3, priority="lowest")])
    before = [encode(event) for event in events]
    fold(events)
    assert [encode(event) for event in events] == before


def test_an_event_of_another_run_is_refused() -> None:
    state = at(S.QUEUED)
    with pytest.raises(IllegalTransition):
        evolve(state, ev.AttemptQueued(id=new_id(), actor=SCHEDULER, run_id="run-2", attempt=0))


# --- random walks ---------------------------------------------------------------------------

EDGES = {
    (S.PENDING, S.QUEUED),
    (S.PENDING, S.STOPPED),
    (S.PENDING, S.FAILED),
    (S.QUEUED, S.STARTING),
    (S.QUEUED, S.STOPPED),
    (S.QUEUED, S.FAILED),
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.TERMINATING),
    (S.RUNNING, S.TERMINATING),
    (S.TERMINATING, S.COMPLETED),
    (S.TERMINATING, S.STOPPED),
    (S.TERMINATING, S.FAILED),
}
BAD_PLACEMENTS = [
    [],
    [rp(1, "a", [0])],
    [rp(0, "a", [0]), rp(0, "b", [1])],
    [rp(0, "a", [0]), rp(1, "a", [1])],
    [rp(0, "a", [2, 2])],
]


def setup_events(rank: int, a: int) -> list[ev.AnyRunEvent]:
    """A rank's image pull, integrations and run token: allowed while the rank holds its GPUs
    (the token once per attempt: the same id again is refused)."""
    ids: dict[str, Any] = {
        "actor": AGENT,
        "run_id": RUN,
        "attempt": a,
        "rank": rank,
        "node": "node-a",
    }
    git: dict[str, Any] = {"index": 0, "integration_type": "git_repo"}
    return [
        ev.ImagePullStarted(id=new_id(), image="img", **ids),
        ev.ImagePullFinished(id=new_id(), image="img", **ids),
        ev.ImagePullFailed(id=new_id(), image="img", error="not found", **ids),
        ev.IntegrationStarted(id=new_id(), **ids, **git),
        ev.IntegrationFinished(id=new_id(), **ids, **git),
        ev.IntegrationFailed(id=new_id(), error="clone failed", **ids, **git),
        ev.RunTokenIssued(id=new_id(), token_id="tokenaaa1", token_hash="0" * 64, **ids),
    ]


def candidates(state: RunState | None) -> list[ev.AnyRunEvent]:
    """Every kind of run event, for the current attempt and its neighbours, legal or not.

    In lifecycle order: Hypothesis shrinks a draw towards the first choice, so a shrunk
    failing walk reads as the ordinary lifecycle plus the steps that matter.
    """
    if state is None:
        return [submitted(), submitted(attempt=1), queued(), restart(1), update(max_retries=1)]
    n = state.latest.index
    count = len(state.latest.ranks)
    ranks = range(-1, max(count, 1) + 1)
    menu: list[ev.AnyRunEvent] = [queued(n), scheduled(n, placement(1))]
    menu += [scheduled(n, placement(2)), scheduled(n, placement(3, gpus=[5]))]
    menu += [scheduled(n, bad) for bad in BAD_PLACEMENTS]
    menu += [rank_running(r, n) for r in ranks]
    menu += [attempt_running(n)]
    menu += [rank_exited(r, n) for r in ranks] + [rank_exited(0, n, 137, USER_ERROR)]
    menu += [terminating(n), terminating(n, NODE_FAILURE), completed(n)]
    menu += [stopped(n), stopped(n, PREEMPTED), failed(n, USER_ERROR), failed(n, NODE_FAILURE)]
    menu += [restart(n + 1), retry(n + 1, "preempted"), restart(n), retry(n + 2, "user_failure")]
    menu += setup_events(0, n) + setup_events(count, n)[:1]
    menu += [stop(n), update(max_retries=2), update(max_retries=-1), update(max_duration=0.0)]
    menu += [update(priority="low", preemptible=True, max_duration=1.5)]
    menu += [delete(), deleted(), submitted()]
    # The same steps for the attempts before and after the current one: all refused.
    for a in (n - 1, n + 1):
        menu += [queued(a), scheduled(a, placement(1)), rank_running(0, a), attempt_running(a)]
        menu += [rank_exited(0, a), terminating(a), completed(a), stopped(a), failed(a), stop(a)]
    return menu


def kind(event: ev.AnyRunEvent) -> str:
    """The walk's choice of kind; a rank's setup events (image, integrations) count as one."""
    tag = ev.tag_of(type(event))
    return "setup" if tag.startswith(("image.", "integration.")) else tag


def try_on_copy(
    state: RunState | None, event: ev.AnyRunEvent, before: Any = None
) -> RunState | None:
    """The state after ``event`` if the rules accept it; a refusal must leave the copy as it was.

    ``before`` is ``msgspec.to_builtins(state)``, when the caller has it already.
    """
    trial = None if state is None else copy_state(state)
    if trial is not None and before is None:
        before = msgspec.to_builtins(trial)
    try:
        return evolve(trial, event)
    except IllegalTransition:
        if trial is not None:
            assert msgspec.to_builtins(trial) == before, f"refused {event!r} changed the state"
        return None
    except Exception as exc:
        raise AssertionError(f"{event!r} raised {exc!r}, not IllegalTransition") from exc


def progress(state: RunState | None) -> tuple[int, ...]:
    """How far a run has come along the main line: attempts, phase, its ranks' steps.

    An attempt that ended before it held GPUs counts as no further than PENDING, so that the
    walk's forward steps lead through STARTING and RUNNING.
    """
    if state is None:
        return (0,)
    latest = state.latest
    ended_early = latest.status.is_terminal() and not latest.ranks
    return (
        len(state.attempts),
        S.PENDING.order if ended_early else latest.status.order,
        sum(rank.running for rank in latest.ranks),
        sum(rank.exited for rank in latest.ranks),
    )


@dataclass
class Step:
    event: ev.AnyRunEvent
    fields: dict[bytes, bytes]  # the event as the log got it, before any later fold
    before: RunState | None
    after: RunState


def walk(data: st.DataObject, steps: int = 40) -> list[Step]:
    """A run's history, drawn one accepted event at a time.

    At each step, either any accepted event (a kind uniformly among the accepted kinds, then an
    event of that kind) or, half the time, one that moves the run on, so walks reach RUNNING and
    later attempts rather than mostly ending at an early stop or delete.
    """
    state: RunState | None = None
    history: list[Step] = []
    for i in range(steps):
        before = None if state is None else msgspec.to_builtins(state)
        accepted = [
            (event, after)
            for event in candidates(state)
            if (after := try_on_copy(state, event, before)) is not None
        ]
        if not accepted:
            break
        if data.draw(st.booleans()):
            here = progress(state)
            accepted = [(e, after) for e, after in accepted if progress(after) > here] or accepted
        kinds = list(dict.fromkeys(kind(event) for event, _ in accepted))
        chosen = data.draw(st.sampled_from(kinds))
        event = data.draw(st.sampled_from([e for e, _ in accepted if kind(e) == chosen]))
        event.time = (i + 1) * 1000
        previous = None if state is None else copy_state(state)
        fields = encode(event)
        state = evolve(state, event)
        history.append(Step(event, fields, previous, copy_state(state)))
    return history


# The whole file runs in well under 20 s; the edge walk, the main property, gets most examples.
WALKS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHORT_WALKS = settings(WALKS, max_examples=100)


def check_attempts(state: RunState) -> None:
    for attempt in state.attempts:
        statuses = [status for status, _ in attempt.timeline]
        times = [time for _, time in attempt.timeline]
        assert statuses[0] is S.PENDING
        assert statuses[-1] is attempt.status
        assert all(a < b for a, b in itertools.pairwise(statuses)), statuses
        assert not any(s.is_terminal() for s in statuses[:-1]), "terminal is last"
        assert times == sorted(times)
        if S.STARTING in statuses and attempt.status.is_terminal():
            assert S.TERMINATING in statuses, f"{statuses}: held GPUs, ended without TERMINATING"
        if attempt.status.is_terminal():
            assert attempt.all_released(), "an ended attempt holds no GPU"
        if attempt.status in (S.PENDING, S.QUEUED):
            assert attempt.ranks == []
    assert all(a.status.is_terminal() for a in state.attempts[:-1]), "one attempt at a time"
    assert [a.index for a in state.attempts] == list(range(len(state.attempts)))
    if state.deleted:
        assert state.delete_requested
        assert state.status.is_terminal()


@WALKS
@given(data=st.data())
def test_a_walk_moves_attempts_only_along_the_lifecycle(data: st.DataObject) -> None:
    history = walk(data)
    assert isinstance(history[0].event, ev.RunSubmitted)
    for count, step in enumerate(history, start=1):
        after = step.after
        assert after.version == count, "the version counts the accepted events"
        check_attempts(after)
        old = [] if step.before is None else step.before.attempts
        for was, now in zip(old, after.attempts, strict=False):
            assert was.status is now.status or (was.status, now.status) in EDGES, (
                f"{ev.tag_of(type(step.event))} moved attempt {now.index} "
                f"from {was.status} to {now.status}"
            )
        if len(after.attempts) > len(old):
            assert len(after.attempts) == len(old) + 1
            if old:
                assert isinstance(step.event, ev.RestartRequested | ev.RetryScheduled)
                assert old[-1].status.is_terminal()
            assert after.latest.index == step.event.attempt == len(old)
            assert after.latest.timeline == [(S.PENDING, step.event.time)]


@SHORT_WALKS
@given(data=st.data())
def test_a_walk_folds_again_to_the_same_state(data: st.DataObject) -> None:
    history = walk(data)
    final = msgspec.to_builtins(history[-1].after)
    refolded = fold([step.event for step in history])
    assert refolded is not None
    assert msgspec.to_builtins(refolded) == final
    # Step by step too, from the events as they were logged, decoded afresh.
    state: RunState | None = None
    for step in history:
        logged = decode(f"{step.event.time}-0", step.fields)
        assert isinstance(logged, ev.RunEvent)
        state = evolve(state, logged)
        assert msgspec.to_builtins(state) == msgspec.to_builtins(step.after)


WILD_EVENTS: st.SearchStrategy[ev.AnyRunEvent] = st.one_of(
    st.builds(ev.RunSubmitted, spec=st.just(spec())),
    *(
        st.from_type(cls)
        for cls in (
            ev.StopRequested,
            ev.RestartRequested,
            ev.UpdateRequested,
            ev.DeleteRequested,
            ev.RunDeleted,
            ev.RetryScheduled,
            ev.AttemptQueued,
            ev.AttemptScheduled,
            ev.ImagePullStarted,
            ev.ImagePullFinished,
            ev.ImagePullFailed,
            ev.IntegrationStarted,
            ev.IntegrationFinished,
            ev.IntegrationFailed,
            ev.RankRunning,
            ev.AttemptRunning,
            ev.RankExited,
            ev.AttemptTerminating,
            ev.AttemptCompleted,
            ev.AttemptStopped,
            ev.AttemptFailed,
        )
    ),
)


@SHORT_WALKS
@given(data=st.data())
def test_every_event_is_accepted_or_refused_with_illegal_transition(
    data: st.DataObject,
) -> None:
    # walk() tries every candidate at every state it reaches: anything but IllegalTransition
    # fails it. Here, events with arbitrary values are thrown at the states reached too.
    history = walk(data, steps=25)
    for step in history:
        n = step.after.latest.index
        event = data.draw(WILD_EVENTS)
        attempt = data.draw(st.sampled_from([event.attempt, n - 1, n, n + 1]))
        try_on_copy(step.after, msgspec.structs.replace(event, run_id=RUN, attempt=attempt))


def test_a_rank_event_must_come_from_the_ranks_node() -> None:
    state = at(S.STARTING)
    wrong = rank_running(0)
    wrong.node = "node-z"
    refused(state, wrong, "rank 0 runs on node-a, not node-z")


def test_an_attempt_whose_ranks_all_started_ran_even_if_one_ended_already() -> None:
    state = run(submitted(), queued(), scheduled(), rank_running(0), rank_exited(0))
    refused(state, attempt_running(), "not every rank runs yet")
    evolve(state, rank_running(1))
    evolve(state, attempt_running())
    assert state.status is S.RUNNING


def test_negative_gpu_indices_are_refused() -> None:
    state = run(submitted(), queued())
    refused(state, scheduled(ranks=placement(1, gpus=[-1])), "GPU indices are not negative")
