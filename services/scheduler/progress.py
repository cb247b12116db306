"""What the events of a placed attempt mean: RUNNING, TERMINATING, its outcome, what follows.

Pure: reads the ``ClusterState`` and returns the events of one run's next append.

Rules, in this order, for an attempt holding GPUs:
- Ranks on a lost node are exited by the scheduler (``rank.exited``, no exit code, reason
  ``NodeFailure``): nobody else is left to report them.
- STARTING or RUNNING, the first rank exit (in the order the log holds them) starts TERMINATING
  with its reason: None for exit code 0 without a reason, else the rank's own reason or
  ``Error`` with the exit code, ``failed_rank`` set. Else a rank on a GPU its node reported
  failed ends it (system, ``GpuFailure``, naming the GPU and the error; retried with
  retry_on_system_failure), a rank on a drained node, or on a draining node past its drain
  deadline (the log's clock), ends it (``NodeDrained``, naming the drain's admin and reason; a
  system failure, so retried with ``retry_on_system_failure``), a RUNNING attempt past
  ``max_duration`` (hours, from its RUNNING entry on the log's clock) ends it
  (``MaxDurationExceeded``), and STARTING with every rank running becomes RUNNING
  (``AttemptState.runs_with``; the report of the last rank to start carries it, so this is
  for an attempt whose ranks' reports did not, an older agent's).
- TERMINATING once every rank has exited: stopped for a stopped/preempted reason, failed for a
  user/system reason or any failing rank (the first failure wins), else completed (where every
  exit was clean, the last rank's report usually carries the end already:
  ``AttemptState.completes_with``). The same append carries what follows: ``run.deleted``
  for a run being deleted, else the retry (a user failure while ``user_failures <=
  max_retries``, never for ``Unschedulable``; a system failure with
  ``retry_on_system_failure``; a preemption, always).
- A run being deleted whose latest attempt is terminal is deleted.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from events.lifecycle import AttemptState, RankState, RunState, clean_exit
from events.model import (
    AnyRunEvent,
    AttemptCompleted,
    AttemptFailed,
    AttemptRunning,
    AttemptStopped,
    AttemptTerminating,
    RankExited,
    Reason,
    RetryScheduled,
    RunDeleted,
)
from events.status import RunStatus
from services.scheduler.cluster import ClusterState
from services.scheduler.decision import Context

S = RunStatus
_STOPPING = ("stopped", "preempted")
_E = TypeVar("_E", bound=AnyRunEvent)
Cause = Literal["user_failure", "system_failure", "preempted"]


def progress(state: ClusterState, run: RunState, ctx: Context) -> list[AnyRunEvent]:
    attempt = run.latest
    if run.deleted:
        return []
    if attempt.status.is_terminal():
        return [_deleted(run, ctx)] if run.delete_requested else []
    if not attempt.status.is_active():
        return []

    events: list[AnyRunEvent] = []
    reasons: dict[int, Reason | None] = {}  # exited ranks, in exit order, with their reasons
    for index in state.exit_order.get(run.run_id, []):
        reasons[index] = rank_reason(attempt.ranks[index])
    for rank in attempt.ranks:
        if rank.exited and rank.rank not in reasons:  # not seen exiting (folded from history)
            reasons[rank.rank] = rank_reason(rank)
    for rank in attempt.ranks:
        node = state.nodes.get(rank.node)
        if not rank.exited and node is not None and not node.alive:
            lost = Reason(
                category="system",
                code="NodeFailure",
                message=f"node {rank.node} stopped sending heartbeats",
                failed_rank=rank.rank,
            )
            events.append(_event(RankExited, run, ctx, rank=rank.rank, node=rank.node, reason=lost))
            reasons[rank.rank] = lost

    status, reason = attempt.status, attempt.reason
    if status is not S.TERMINATING:
        if attempt.runs_with():  # usually told by the last rank's own report (the agent's)
            events.append(_event(AttemptRunning, run, ctx))
        ends, reason = _ending(state, run, attempt, reasons, ctx)
        if not ends:
            return events
        events.append(_event(AttemptTerminating, run, ctx, reason=reason))

    if len(reasons) == len(attempt.ranks):
        end = _outcome(run, reason, reasons, ctx)
        events.append(end)
        events += _follow_ups(run, end, ctx)
    return events


def rank_reason(rank: RankState) -> Reason | None:
    """Why a rank's exit fails its attempt; None for a clean exit."""
    if clean_exit(rank.exit_code, rank.reason):
        return None
    if rank.reason is not None:
        if rank.reason.failed_rank is None:
            return Reason(
                category=rank.reason.category,
                code=rank.reason.code,
                message=rank.reason.message,
                exit_code=rank.reason.exit_code,
                failed_rank=rank.rank,
            )
        return rank.reason
    if rank.exit_code is not None:
        message = f"rank {rank.rank} exited with code {rank.exit_code}"
        return Reason(
            category="user",
            code="Error",
            message=message,
            exit_code=rank.exit_code,
            failed_rank=rank.rank,
        )
    if rank.signal is not None:
        message = f"rank {rank.rank} was killed by signal {rank.signal}"
        return Reason(category="user", code="Error", message=message, failed_rank=rank.rank)
    message = f"rank {rank.rank} ended without an exit code"
    return Reason(category="system", code="RankLost", message=message, failed_rank=rank.rank)


def _ending(
    state: ClusterState,
    run: RunState,
    attempt: AttemptState,
    reasons: dict[int, Reason | None],
    ctx: Context,
) -> tuple[bool, Reason | None]:
    """Whether the attempt starts TERMINATING now, and with which reason."""
    if reasons:
        return True, next(iter(reasons.values()))
    for rank in attempt.ranks:
        node = state.nodes.get(rank.node)
        failed = (
            [node.failed_gpus[gpu] for gpu in rank.gpus if gpu in node.failed_gpus] if node else []
        )
        if failed:
            return True, Reason(
                category="system",
                code="GpuFailure",
                message=failed[0],
                failed_rank=rank.rank,
            )
        if node is not None and state.drain_past(node, ctx.now_ms):
            service = node.service
            why = f": {service.reason}" if service.reason else ""
            by = f" by {service.by}" if service.by else ""
            past = " (its drain deadline passed)" if service.service == "draining" else ""
            return True, Reason(
                category="system",
                code="NodeDrained",
                message=f"node {rank.node} was drained{by}{why}{past}",
                failed_rank=rank.rank,
            )
    deadline = state.deadlines.get(run.run_id)
    if attempt.status is S.RUNNING and deadline is not None and deadline <= ctx.now_ms:
        hours = run.spec.scheduling.max_duration
        return True, Reason(
            category="stopped",
            code="MaxDurationExceeded",
            message=f"ran longer than its max_duration of {hours} h",
        )
    return False, None


def _outcome(
    run: RunState, reason: Reason | None, reasons: dict[int, Reason | None], ctx: Context
) -> AttemptCompleted | AttemptStopped | AttemptFailed:
    why = reason if reason is not None else next((r for r in reasons.values() if r), None)
    if why is None:
        return _event(AttemptCompleted, run, ctx)
    if why.category in _STOPPING:
        return _event(AttemptStopped, run, ctx, reason=why)
    return _event(AttemptFailed, run, ctx, reason=why)


def _follow_ups(
    run: RunState, end: AttemptCompleted | AttemptStopped | AttemptFailed, ctx: Context
) -> list[AnyRunEvent]:
    if run.delete_requested:
        return [_deleted(run, ctx)]
    scheduling = run.spec.scheduling
    cause: Cause | None = None
    if isinstance(end, AttemptFailed):
        if end.reason.category == "user" and end.reason.code != "Unschedulable":
            if run.user_failures + 1 <= scheduling.max_retries:
                cause = "user_failure"
        elif end.reason.category == "system" and scheduling.retry_on_system_failure:
            cause = "system_failure"
    elif isinstance(end, AttemptStopped) and end.reason.category == "preempted":
        cause = "preempted"
    if cause is None:
        return []
    return [
        RetryScheduled(
            id=ctx.new_id(),
            actor=ctx.actor,
            run_id=run.run_id,
            attempt=run.latest.index + 1,
            cause=cause,
        )
    ]


def _deleted(run: RunState, ctx: Context) -> RunDeleted:
    return _event(RunDeleted, run, ctx)


def _event(cls: type[_E], run: RunState, ctx: Context, **fields: Any) -> _E:
    return cls(
        id=ctx.new_id(),
        actor=ctx.actor,
        run_id=run.run_id,
        attempt=run.latest.index,
        **fields,
    )
