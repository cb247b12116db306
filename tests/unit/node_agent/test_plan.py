"""What the node-agent does about a run, from the run's folded state, and how it reports an exit."""

from __future__ import annotations

import signal
from typing import Any

from events.lifecycle import RunState, fold
from events.model import (
    AnyRunEvent,
    AttemptRunning,
    AttemptScheduled,
    AttemptStopped,
    AttemptTerminating,
    RankExited,
    RankPlacement,
    RankRunning,
    Reason,
    RestartRequested,
)
from services.node_agent.job import ExitStatus, RankKey
from services.node_agent.plan import Kill, Release, Start, Stop, exit_reason, plan
from tests import factories as f

STOPPED = Reason(category="stopped", code="Stopped", message="stopped by alice")
RUN = "run1"


def envelope(attempt: int = 0) -> dict[str, Any]:
    return {"id": f.new_id(), "actor": "scheduler@test", "run_id": RUN, "attempt": attempt}


def scheduled(attempt: int = 0) -> AttemptScheduled:
    ranks = [
        RankPlacement(rank=0, node="a", gpus=[0, 1]),
        RankPlacement(rank=1, node="b", gpus=[3]),
    ]
    return AttemptScheduled(**envelope(attempt), cluster="local", ranks=ranks)


def rank_event(kind: type[RankRunning | RankExited], rank: int, **extra: Any) -> AnyRunEvent:
    return kind(**envelope(), rank=rank, node="ab"[rank], **extra)


def state(*events: AnyRunEvent) -> RunState:
    folded = fold([f.submitted(RUN), f.queued(RUN), *events])
    assert folded is not None
    return folded


KEY_A = RankKey(RUN, 0, 0)


def test_a_rank_placed_here_is_started_and_only_that_one() -> None:
    actions = plan(state(scheduled()), "a", [])
    assert len(actions) == 1
    assert isinstance(actions[0], Start)
    job = actions[0].job
    assert (job.key, job.gpus, len(job.placement)) == (KEY_A, [0, 1], 2)
    assert plan(state(scheduled()), "c", []) == []


def test_a_rank_begun_here_is_not_started_again() -> None:
    assert plan(state(scheduled()), "a", [KEY_A]) == []


def test_a_stop_stops_the_ranks_begun_here() -> None:
    terminating = AttemptTerminating(**envelope(), reason=STOPPED)
    assert plan(state(scheduled(), terminating), "a", [KEY_A]) == [Stop(KEY_A, STOPPED)]


def test_a_rank_exiting_zero_stops_nobody() -> None:
    events = [
        scheduled(),
        rank_event(RankRunning, 0),
        rank_event(RankRunning, 1),
        AttemptRunning(**envelope()),
        rank_event(RankExited, 1, exit_code=0),
        AttemptTerminating(**envelope(), reason=None),
    ]
    assert plan(state(*events), "a", [KEY_A]) == []


def test_a_rank_stopped_before_it_began_here_is_released_with_the_reason() -> None:
    terminating = AttemptTerminating(**envelope(), reason=STOPPED)
    assert plan(state(scheduled(), terminating), "a", []) == [Release(KEY_A, STOPPED)]


def test_a_running_rank_this_node_has_no_record_of_is_lost() -> None:
    actions = plan(state(scheduled(), rank_event(RankRunning, 0)), "a", [])
    assert len(actions) == 1
    assert isinstance(actions[0], Release)
    assert (actions[0].reason.category, actions[0].reason.code) == ("system", "RankLost")


def test_a_rank_the_log_released_is_killed() -> None:
    failure = Reason(category="system", code="NodeFailure")
    exited = rank_event(RankExited, 0, reason=failure)
    assert plan(state(scheduled(), exited), "a", [KEY_A]) == [Kill(KEY_A)]


def test_a_rank_of_an_attempt_the_run_moved_on_from_is_killed_and_the_new_one_started() -> None:
    events: list[AnyRunEvent] = [
        scheduled(),
        AttemptTerminating(**envelope(), reason=STOPPED),
        rank_event(RankExited, 0),
        rank_event(RankExited, 1),
        AttemptStopped(**envelope(), reason=STOPPED),
        RestartRequested(**envelope(1)),
        f.queued(RUN, attempt=1),
        scheduled(1),
    ]
    actions = plan(state(*events), "a", [KEY_A])
    assert actions[0] == Kill(KEY_A)
    assert isinstance(actions[1], Start)
    assert actions[1].job.key == RankKey(RUN, 1, 0)


def test_exit_reasons() -> None:
    running = state(scheduled()).latest
    assert exit_reason(ExitStatus(exit_code=0), running) is None
    error = exit_reason(ExitStatus(exit_code=3), running)
    assert error is not None
    assert (error.category, error.code, error.exit_code) == ("user", "Error", 3)
    killed = exit_reason(ExitStatus(signal=signal.SIGKILL), running)
    assert killed is not None
    assert (killed.code, killed.exit_code) == ("Error", None)
    assert "SIGKILL" in killed.message
    failed_to_start = exit_reason(ExitStatus(error="no bash"), running)
    assert failed_to_start is not None
    assert (failed_to_start.category, failed_to_start.code) == ("system", "RankLost")


def test_a_rank_ended_by_a_stop_gives_the_stops_reason() -> None:
    stopping = state(scheduled(), AttemptTerminating(**envelope(), reason=STOPPED)).latest
    assert exit_reason(ExitStatus(signal=signal.SIGTERM, stopped=True), stopping) == STOPPED
    assert exit_reason(ExitStatus(stopped=True), stopping) == STOPPED  # before it began
    assert exit_reason(ExitStatus(exit_code=0, stopped=True), stopping) is None
