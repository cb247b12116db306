"""The human lines of ``describe run``'s event log, one per event worth a line.

``describe(event, requeued, stop_requested)`` is pure: ``requeued`` says an ``attempt.queued``
found its attempt queued already (a new position: no new line), ``stop_requested`` that a user
asked to stop the attempt (its ending needs no second line). The wording follows mcli where
mcli has a line ("Run created", "Run started", "Run failed with exit code 1", "Run placed back
in the scheduling queue", "Run resumed").
"""

from __future__ import annotations

from typing import assert_never

from events import model as ev

_CAUSES = {
    "user_failure": "a failure",
    "system_failure": "a system failure",
    "preempted": "a preemption",
}


def describe(  # noqa: PLR0911, PLR0912
    event: ev.AnyRunEvent, *, requeued: bool = False, stop_requested: bool = False
) -> str | None:
    match event:
        case ev.RunSubmitted():
            return "Run created"
        case ev.RestartRequested():
            return f"Run restarted by {_who(event)}"
        case ev.RetryScheduled():
            return f"Run retried after {_CAUSES.get(event.cause, event.cause)}"
        case ev.AttemptQueued():
            if requeued:
                return None
            if event.attempt == 0:
                return "Run placed in the scheduling queue"
            return "Run placed back in the scheduling queue"
        case ev.AttemptScheduled():
            nodes = ", ".join(rank.node for rank in event.ranks)
            return f"Run scheduled on {nodes}"
        case ev.AttemptRunning():
            return "Run started" if event.attempt == 0 else "Run resumed"
        case ev.StopRequested():
            return f"Run stopped by {_who(event)}"
        case ev.AttemptTerminating():
            reason = event.reason
            if reason is None or (reason.category == "stopped" and reason.code == "Stopped"):
                return None  # every rank exited 0, or the user's stop already has its line
            return f"Run terminating: {_reason(reason)}"
        case ev.AttemptCompleted():
            return "Run completed"
        case ev.AttemptStopped():
            if stop_requested:
                return None
            return f"Run stopped: {_reason(event.reason)}"
        case ev.AttemptFailed():
            reason = event.reason
            if reason.code == "Error" and reason.exit_code is not None:
                return f"Run failed with exit code {reason.exit_code}"
            return f"Run failed: {_reason(reason)}"
        case ev.UpdateRequested():
            changes = ", ".join(f"{field}={value}" for field, value in event.changes().items())
            return f"Run updated by {_who(event)}: {changes or 'no change'}"
        case ev.MetadataUpdated():
            return f"Metadata updated by {_who(event)}: {', '.join(sorted(event.metadata))}"
        case ev.DeleteRequested():
            return f"Run deletion requested by {_who(event)}"
        case ev.RunDeleted():
            return "Run deleted"
        case ev.ImagePullFailed():
            return f"Image pull failed on rank {event.rank} ({event.node}): {event.error}"
        case ev.ImagePullFinished():
            return _pulled(event)
        case ev.IntegrationFailed():
            return (
                f"Integration {event.index} ({event.integration_type}) failed on rank "
                f"{event.rank} ({event.node}): {event.error}"
            )
        case ev.RankExited():
            if event.exit_code in (0, None) and event.signal is None and event.reason is None:
                return None
            return f"Rank {event.rank} on {event.node} {_rank_end(event)}"
        case (
            ev.ImagePullStarted()
            | ev.IntegrationStarted()
            | ev.IntegrationFinished()
            | ev.RankRunning()
            | ev.RunTokenIssued()
        ):
            return None
        case _:
            assert_never(event)


def _pulled(event: ev.ImagePullFinished) -> str | None:
    """A pull that was measured (an executor that pulls itself): its size and time."""
    if event.duration_ms is None:
        return None
    size = "" if event.size_bytes is None else f"{_size(event.size_bytes)} "
    return (
        f"Image {event.image} pulled on rank {event.rank} ({event.node}): "
        f"{size}in {event.duration_ms / 1000:.2f}s"
    )


def _size(size: int) -> str:
    """Bytes in the units docker prints (decimal: 1 MB = 1,000,000 bytes)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _who(event: ev.Event) -> str:
    """The actor, and the run attempt it acted through (a run's token), if any."""
    return event.actor if event.via is None else f"{event.actor} ({event.via})"


def _rank_end(event: ev.RankExited) -> str:
    """How a rank ended and why: the signal that ended it comes first (a stop's SIGTERM is
    the stop, whatever exit code a shell made of it), then its exit code."""
    reason = event.reason
    if event.signal is not None:
        how = f"ended by signal {event.signal}"
    elif event.exit_code is not None:
        how = f"exited with exit code {event.exit_code}"
    else:
        how = "ended without an exit code"
    if reason is None:
        return how
    if reason.category == "stopped" and reason.code == "Stopped" and reason.message:
        return f"{how} ({reason.message})"  # "stopped by alice": the code says it again
    return f"{how}: {_reason(reason)}"


def _reason(reason: ev.Reason) -> str:
    text = str(reason)
    return f"{text} ({reason.message})" if reason.message and reason.message not in text else text
