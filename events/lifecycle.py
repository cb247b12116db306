"""The lifecycle rules: how a run and its attempts move, and what they refuse.

``evolve(state, event)`` folds one event into a run's state and raises ``IllegalTransition``
for an event the rules forbid. Every writer checks its events with it before appending (the
append is conditional on the version it read), and every fold applies it, so the log never
holds a step the rules refuse. Pure: no IO, no clock; times come from the events.

Per attempt: PENDING -> QUEUED -> STARTING -> RUNNING -> TERMINATING -> COMPLETED | STOPPED |
FAILED. An attempt that never held GPUs (PENDING or QUEUED) may end STOPPED or FAILED at once;
one that did (STARTING, RUNNING) ends only through TERMINATING, and only when every rank has
released its GPUs. Per run: a new attempt (restart or retry) opens only when the latest one is
terminal; a stop of a terminal or terminating attempt is refused; a deleted run accepts nothing.
A run token is issued only to a live rank of the current attempt (``events.tokens`` says when
it works).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NoReturn, assert_never

import msgspec

from events import model as ev
from events.errors import IllegalTransition
from events.spec import RunSpec
from events.status import RunStatus

S = RunStatus

#: The transition table of an attempt: the phases each phase may be entered from. Every
#: writer and every fold goes by it (``projections.attempts`` too). QUEUED from QUEUED is a
#: new queue position or reason, not a new phase; an attempt that never held GPUs may end
#: STOPPED or FAILED at once, one that did only through TERMINATING.
ENTERED_FROM: Mapping[RunStatus, frozenset[RunStatus]] = {
    S.QUEUED: frozenset({S.PENDING, S.QUEUED}),
    S.STARTING: frozenset({S.QUEUED}),
    S.RUNNING: frozenset({S.STARTING}),
    S.TERMINATING: frozenset({S.STARTING, S.RUNNING}),
    S.COMPLETED: frozenset({S.TERMINATING}),
    S.STOPPED: frozenset({S.TERMINATING, S.PENDING, S.QUEUED}),
    S.FAILED: frozenset({S.TERMINATING, S.PENDING, S.QUEUED}),
}


def clean_exit(exit_code: int | None, reason: ev.Reason | None) -> bool:
    """A rank's exit that fails nothing and stops nothing: code 0, no reason given."""
    return exit_code == 0 and reason is None


class RankState(msgspec.Struct, kw_only=True):
    rank: int
    node: str
    gpus: list[int]
    running: bool = False
    exited: bool = False
    exit_code: int | None = None
    signal: int | None = None
    reason: ev.Reason | None = None

    @property
    def clean(self) -> bool:
        """It exited, cleanly (``clean_exit``)."""
        return self.exited and clean_exit(self.exit_code, self.reason)


class AttemptState(msgspec.Struct, kw_only=True):
    index: int
    status: RunStatus = S.PENDING
    #: Every phase the attempt entered, with the log's time of entry, in order.
    timeline: list[tuple[RunStatus, int]] = msgspec.field(default_factory=list)
    cluster: str | None = None
    gpu_type: str | None = None
    ranks: list[RankState] = msgspec.field(default_factory=list)
    reason: ev.Reason | None = None
    queue_reason: str = ""
    #: Its latest ``attempt.queued`` carried the shape it was judged by (``nodes`` > 0).
    judged: bool = False
    stop_requested_by: str | None = None
    opened_by: str = ""
    #: The run tokens issued for this attempt's ranks: token id -> the SHA-256 of its secret.
    tokens: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return sum(len(rank.gpus) for rank in self.ranks)

    def rank(self, index: int) -> RankState | None:
        return self.ranks[index] if 0 <= index < len(self.ranks) else None

    def all_released(self) -> bool:
        return all(rank.exited for rank in self.ranks)

    def runs_with(self, starting: int | None = None) -> bool:
        """Whether the attempt is RUNNING now (``attempt.running`` follows): STARTING with
        every rank's command started, ``starting``'s by the event that goes with this one.
        Even if a rank has ended since (a run of `true`): the attempt ran, so its timeline
        shows RUNNING before TERMINATING."""
        return self.status is S.STARTING and all(
            rank.running or rank.rank == starting for rank in self.ranks
        )

    def completes_with(self, exiting: int) -> bool:
        """Whether the attempt is COMPLETED once ``exiting`` exits cleanly, by the event that
        goes with this one (``attempt.terminating`` with no reason first, unless it is
        TERMINATING already, then ``attempt.completed``): every other rank exited cleanly, and
        nothing gave the attempt a reason to end otherwise (a stop, a preemption, a failure).
        This is the scheduler's outcome rule (``services.scheduler.progress``) for the case
        where every exit is clean."""
        return (
            self.reason is None
            and self.status in (S.STARTING, S.RUNNING, S.TERMINATING)
            and any(rank.rank == exiting and not rank.exited for rank in self.ranks)
            and all(rank.clean or rank.rank == exiting for rank in self.ranks)
        )


class RunState(msgspec.Struct, kw_only=True):
    run_id: str
    name: str
    spec: RunSpec
    created_by: str
    created_at: int
    #: Events folded so far; the expected version of the next append.
    version: int = 0
    attempts: list[AttemptState] = msgspec.field(default_factory=list)
    user_failures: int = 0
    delete_requested: bool = False
    deleted: bool = False

    @property
    def latest(self) -> AttemptState:
        return self.attempts[-1]

    @property
    def status(self) -> RunStatus:
        return self.latest.status


def evolve(state: RunState | None, event: ev.AnyRunEvent) -> RunState:
    """``state`` after ``event``; raises ``IllegalTransition`` if the rules forbid it.

    The state is updated in place (folds run over millions of events) and returned; a caller
    that must keep the old state folds a copy (``copy_state``).
    """
    if state is None:
        if not isinstance(event, ev.RunSubmitted):
            _refuse(event, "the run does not exist")
        if event.attempt != 0:
            _refuse(event, "a run starts at attempt 0")
        state = RunState(
            run_id=event.run_id,
            name=event.name,
            spec=msgspec.structs.replace(event.spec),
            created_by=event.actor,
            created_at=event.time,
            attempts=[_open(0, event)],
        )
        state.version = 1
        return state
    if event.run_id != state.run_id:
        _refuse(event, f"it belongs to run {event.run_id}, not {state.run_id}")
    if state.deleted:
        _refuse(event, "the run is deleted")
    _apply(state, event)
    state.version += 1
    return state


def fold(events: list[ev.AnyRunEvent]) -> RunState | None:
    state: RunState | None = None
    for event in events:
        state = evolve(state, event)
    return state


def copy_state(state: RunState) -> RunState:
    return msgspec.convert(msgspec.to_builtins(state), RunState)


def _apply(state: RunState, event: ev.AnyRunEvent) -> None:  # noqa: PLR0912, PLR0915
    attempt = state.latest
    match event:
        case ev.RunSubmitted():
            _refuse(event, "the run exists already")
        case ev.RestartRequested():
            _require_new_attempt(state, event)
            state.attempts.append(_open(event.attempt, event))
        case ev.RetryScheduled():
            _require_new_attempt(state, event)
            _require_retry_cause(attempt, event)
            state.attempts.append(_open(event.attempt, event))
        case ev.StopRequested():
            _current(attempt, event)
            if attempt.status.is_terminal() or attempt.status is S.TERMINATING:
                _refuse(event, f"attempt {attempt.index} is already {attempt.status.display_name}")
            attempt.stop_requested_by = event.actor
        case ev.UpdateRequested():
            _update(state, event)
        case ev.MetadataUpdated():
            metadata = state.spec.metadata | event.metadata
            state.spec = msgspec.structs.replace(state.spec, metadata=metadata)
        case ev.DeleteRequested():
            if state.delete_requested:
                _refuse(event, "the run is being deleted already")
            state.delete_requested = True
        case ev.RunDeleted():
            if not state.delete_requested or not attempt.status.is_terminal():
                _refuse(event, "a run is deleted after its delete request and latest attempt end")
            state.deleted = True
        case ev.AttemptQueued():
            _phase(attempt, event, S.QUEUED)
            attempt.queue_reason = event.reason
            attempt.judged = event.nodes > 0
        case ev.AttemptScheduled():
            _schedule(attempt, event)
        case (
            ev.ImagePullStarted()
            | ev.ImagePullFinished()
            | ev.ImagePullFailed()
            | ev.IntegrationStarted()
            | ev.IntegrationFinished()
            | ev.IntegrationFailed()
        ):
            _current(attempt, event)
            _live_rank(attempt, event, event.rank, event.node)
        case ev.RunTokenIssued():
            _live_rank(attempt, event, event.rank, event.node)
            if event.token_id in attempt.tokens:
                _refuse(event, f"token {event.token_id} was issued already")
            attempt.tokens[event.token_id] = event.token_hash
        case ev.RankRunning():
            rank = _live_rank(attempt, event, event.rank, event.node)
            if rank.running:
                _refuse(event, f"rank {event.rank} runs already")
            rank.running = True
        case ev.AttemptRunning():
            if not all(rank.running for rank in attempt.ranks):  # some may have ended since
                _refuse(event, "not every rank runs yet")
            _phase(attempt, event, S.RUNNING)
        case ev.RankExited():
            rank = _live_rank(attempt, event, event.rank, event.node)
            rank.exited, rank.exit_code, rank.signal = True, event.exit_code, event.signal
            rank.reason = event.reason
        case ev.AttemptTerminating():
            _phase(attempt, event, S.TERMINATING)
            attempt.reason = event.reason
        case ev.AttemptCompleted():
            _end(attempt, event, S.COMPLETED, None)
        case ev.AttemptStopped():
            _end(attempt, event, S.STOPPED, event.reason)
        case ev.AttemptFailed():
            _end(attempt, event, S.FAILED, event.reason)
            if event.reason.category == "user":
                state.user_failures += 1
        case _:
            assert_never(event)


def _open(index: int, event: ev.RunEvent) -> AttemptState:
    return AttemptState(index=index, timeline=[(S.PENDING, event.time)], opened_by=event.actor)


def _require_new_attempt(state: RunState, event: ev.RunEvent) -> None:
    if state.delete_requested:
        _refuse(event, "the run is being deleted")
    latest = state.latest
    if not latest.status.is_terminal():
        _refuse(event, f"attempt {latest.index} is still {latest.status.display_name}")
    if event.attempt != latest.index + 1:
        _refuse(event, f"the next attempt is {latest.index + 1}, not {event.attempt}")


def _require_retry_cause(attempt: AttemptState, event: ev.RetryScheduled) -> None:
    category = attempt.reason.category if attempt.reason else None
    expected = {
        "user_failure": (S.FAILED, "user"),
        "system_failure": (S.FAILED, "system"),
        "preempted": (S.STOPPED, "preempted"),
    }[event.cause]
    if (attempt.status, category) != expected:
        _refuse(
            event,
            f"a {event.cause} retry follows an attempt that ended {expected[0].display_name} "
            f"({expected[1]}), not {attempt.status.display_name} ({category})",
        )


def _current(attempt: AttemptState, event: ev.RunEvent) -> None:
    if event.attempt != attempt.index:
        _refuse(event, f"attempt {event.attempt} is not the current attempt ({attempt.index})")


def _phase(attempt: AttemptState, event: ev.RunEvent, target: RunStatus) -> None:
    _current(attempt, event)
    if attempt.status not in ENTERED_FROM[target]:
        _refuse(event, f"attempt {attempt.index} is {attempt.status.display_name}")
    if attempt.status is not target:
        attempt.timeline.append((target, event.time))
        attempt.status = target


def _schedule(attempt: AttemptState, event: ev.AttemptScheduled) -> None:
    if not event.ranks:
        _refuse(event, "a placement needs at least one rank")
    if [rank.rank for rank in event.ranks] != list(range(len(event.ranks))):
        _refuse(event, "ranks must be numbered 0..n-1 in order")
    if len({rank.node for rank in event.ranks}) != len(event.ranks):
        _refuse(event, "each rank runs on its own node")
    if any(len(set(rank.gpus)) != len(rank.gpus) for rank in event.ranks):
        _refuse(event, "a rank holds each GPU once")
    if any(gpu < 0 for rank in event.ranks for gpu in rank.gpus):
        _refuse(event, "GPU indices are not negative")
    _phase(attempt, event, S.STARTING)
    attempt.cluster, attempt.gpu_type = event.cluster, event.gpu_type
    attempt.ranks = [_rank_state(rank) for rank in event.ranks]


def _rank_state(placement: ev.RankPlacement) -> RankState:
    return RankState(rank=placement.rank, node=placement.node, gpus=list(placement.gpus))


def _live_rank(attempt: AttemptState, event: ev.RunEvent, index: int, node: str) -> RankState:
    _current(attempt, event)
    if not attempt.status.is_active():
        _refuse(event, f"attempt {attempt.index} is {attempt.status.display_name}")
    rank = attempt.rank(index)
    if rank is None:
        _refuse(event, f"attempt {attempt.index} has no rank {index}")
    if rank.node != node:
        _refuse(event, f"rank {index} runs on {rank.node}, not {node}")
    if rank.exited:
        _refuse(event, f"rank {index} has exited")
    return rank


def _end(
    attempt: AttemptState, event: ev.RunEvent, target: RunStatus, reason: ev.Reason | None
) -> None:
    if attempt.status is S.TERMINATING and not attempt.all_released():
        _current(attempt, event)
        _refuse(event, "a rank still holds its GPUs")
    _phase(attempt, event, target)
    attempt.reason = reason


def _update(state: RunState, event: ev.UpdateRequested) -> None:
    changes = event.changes()
    if event.max_retries is not None and event.max_retries < 0:
        _refuse(event, "max_retries must not be negative")
    if event.max_duration is not None and not (
        math.isfinite(event.max_duration) and event.max_duration > 0
    ):
        _refuse(event, "max_duration must be a positive number of hours")
    scheduling = msgspec.structs.replace(state.spec.scheduling, **changes)
    state.spec = msgspec.structs.replace(state.spec, scheduling=scheduling)


def _refuse(event: ev.RunEvent, why: str) -> NoReturn:
    raise IllegalTransition(event.aggregate, ev.tag_of(type(event)), why)
