"""What the node-agent does about a run, decided from the run's state as the log folds it.

``plan(state, node, local)`` is pure: ``local`` holds the ranks of the run this agent has
begun (in this life or, found on disk, a previous one). It returns:

- ``Start``: a rank placed on this node, still holding its GPUs, that nothing here has begun;
  unless its attempt is already stopping (``attempt.terminating`` with a reason), then
- ``Release``: report the exit of a rank that holds GPUs in the log but runs nowhere: it was
  stopped before it began, or this node lost every trace of it (``RankLost``);
- ``Stop``: the attempt of a rank begun here is terminating with a reason (a stop, a
  preemption, another rank's failure): SIGTERM, grace period, SIGKILL; setup is aborted.
  ``attempt.terminating`` without a reason (a rank exited 0) stops nothing;
- ``Kill``: the log says a rank begun here is over (it exited, or its attempt moved on), so
  whatever still runs of it is killed at once.

The events the agent reports about its ranks are built here too.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Collection
from typing import NamedTuple

from events.lifecycle import AttemptState, RankState, RunState
from events.model import RankExited, Reason
from events.status import RunStatus
from services.node_agent.errors import RankGone
from services.node_agent.job import ExitStatus, RankJob, RankKey, job_of

NO_RECORD = "this node has no record of the rank (its node-agent lost its data directory)"


class Start(NamedTuple):
    job: RankJob


class Release(NamedTuple):
    key: RankKey
    reason: Reason


class Stop(NamedTuple):
    key: RankKey
    reason: Reason


class Kill(NamedTuple):
    key: RankKey


Action = Start | Release | Stop | Kill


def plan(state: RunState, node: str, local: Collection[RankKey]) -> list[Action]:
    actions: list[Action] = []
    for key in sorted(k for k in local if k.run_id == state.run_id):
        if not rank_live(state, key):
            actions.append(Kill(key))
            continue
        reason = stop_reason(state.attempts[key.attempt])
        if reason is not None:
            actions.append(Stop(key, reason))
    latest = state.latest
    if not latest.status.is_active():
        return actions
    for rank in latest.ranks:
        key = RankKey(state.run_id, latest.index, rank.rank)
        if rank.node != node or rank.exited or key in local:
            continue
        reason = stop_reason(latest)
        if rank.running:
            actions.append(
                Release(key, Reason(category="system", code="RankLost", message=NO_RECORD))
            )
        elif reason is not None:
            actions.append(Release(key, reason))
        else:
            actions.append(Start(job_of(state, latest, rank.rank)))
    return actions


def rank_lost(message: str) -> Reason:
    """A rank that ended without a status anyone saw: a system failure, never an exit code."""
    return Reason(category="system", code="RankLost", message=message)


def stop_reason(attempt: AttemptState) -> Reason | None:
    """The reason the attempt's ranks must stop, or None while they may run on."""
    if attempt.status is RunStatus.TERMINATING:
        return attempt.reason
    return None


def rank_live(state: RunState, key: RankKey) -> bool:
    try:
        locate(state, key)
    except RankGone:
        return False
    return True


def locate(state: RunState | None, key: RankKey) -> tuple[AttemptState, RankState]:
    """The attempt and rank of ``key`` while the rank holds its GPUs; else ``RankGone``."""
    if state is None or state.deleted:
        raise RankGone(f"run {key.run_id} does not exist")
    attempt = state.latest
    if attempt.index != key.attempt:
        raise RankGone(f"attempt {key.attempt} is not the current attempt ({attempt.index})")
    if not attempt.status.is_active():
        raise RankGone(f"attempt {key.attempt} is {attempt.status.display_name}")
    rank = attempt.rank(key.rank)
    if rank is None:
        raise RankGone(f"attempt {key.attempt} has no rank {key.rank}")
    if rank.exited:
        raise RankGone(f"rank {key.rank} has exited")
    return attempt, rank


FENCED = Reason(
    category="system",
    code="NodeFenced",
    message="the node's agent was silent past the fence timeout: the rank was stopped",
)


def exit_reason(status: ExitStatus, attempt: AttemptState) -> Reason | None:
    """Why a rank ended, from how its command ended; None for exit code 0."""
    if status.fenced or status.error is not None:
        lost = Reason(category="system", code="RankLost", message=status.error or "")
        return FENCED if status.fenced else lost
    if status.exit_code == 0:
        return None
    stopping = stop_reason(attempt)
    if status.stopped and stopping is not None:
        return stopping  # it ended because it was told to: the attempt's reason says why
    if status.exit_code is not None:
        return Reason(
            category="user",
            code="Error",
            exit_code=status.exit_code,
            message=f"the command exited with code {status.exit_code}",
        )
    if status.signal is not None:
        return Reason(
            category="user",
            code="Error",
            message=f"the command was killed by {signal_name(status.signal)}",
        )
    return stopping or Reason(category="stopped", code="Stopped", message="stopped before it ran")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exited(
    key: RankKey, node: str, actor: str, new_id: Callable[[], str], *, exit_code: int | None,
    signal: int | None = None, reason: Reason | None,
) -> RankExited:  # fmt: skip
    return RankExited(
        id=new_id(),
        actor=actor,
        run_id=key.run_id,
        attempt=key.attempt,
        rank=key.rank,
        node=node,
        exit_code=exit_code,
        signal=signal,
        reason=reason,
    )
