"""What users ask of a run, and the events each request becomes.

``decide(state, command, new_id)`` is pure: it reads the run's state, refuses with
``RequestRefused`` (a reason a user can act on) or returns the events to append. The store
checks them against the lifecycle rules and appends them on the version that was read.

A stop of an attempt that holds no GPUs (PENDING, QUEUED) ends it STOPPED at once; one that
holds GPUs enters TERMINATING and the scheduler ends it when every rank has released them. A
delete of a finished run records the deletion at once; of an active one it stops it first, and
the scheduler records the deletion when the attempt has ended. An update of the metadata
carries only the keys whose value changes (``events.metadata``), and none is appended when
nothing changes; the run's merged metadata is held to the server's limit
(``check_metadata``), at submission as at each update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, assert_never

import msgspec

from events import metadata as md
from events.errors import EventsError
from events.lifecycle import RunState
from events.model import (
    AnyRunEvent,
    AttemptStopped,
    AttemptTerminating,
    DeleteRequested,
    MetadataUpdated,
    Reason,
    RestartRequested,
    RunDeleted,
    RunSubmitted,
    StopRequested,
    UpdateRequested,
)
from events.spec import Priority, RunSpec
from events.status import RunStatus

NewId = Callable[[], str]
_E = TypeVar("_E", RestartRequested, DeleteRequested, RunDeleted)


class RequestRefused(EventsError):
    """A user's request that cannot be carried out in the run's state."""

    def __init__(self, run: str, why: str) -> None:
        super().__init__(f"run {run}: {why}")
        self.run = run
        self.why = why


class RunIsDeleted(RequestRefused):
    """A request for a run that is deleted, or being deleted: it accepts none any more."""

    def __init__(self, run: str) -> None:
        super().__init__(run, "the run is deleted")


class MetadataTooLarge(RequestRefused):
    """The run's metadata would be over the server's limit: nothing of the request is kept."""

    def __init__(self, run: str, size: int, limit: int) -> None:
        super().__init__(
            run,
            f"its metadata would be {size} bytes as JSON, over the limit of {limit} bytes; "
            "send fewer or smaller values",
        )
        self.size = size
        self.limit = limit


def check_metadata(run: str, metadata: dict[str, Any], limit: int) -> None:
    """``MetadataTooLarge`` if ``metadata``, the whole of a run's, is over ``limit`` bytes."""
    size = md.size(metadata)
    if size > limit:
        raise MetadataTooLarge(run, size, limit)


class SubmitRun(msgspec.Struct, kw_only=True, frozen=True):
    actor: str
    run_id: str
    name: str  # unique: the base name plus a random suffix
    spec: RunSpec
    parent: str | None = None  # the name of the run it is submitted from


class StopRun(msgspec.Struct, kw_only=True, frozen=True):
    actor: str
    reason: str = ""


class RestartRun(msgspec.Struct, kw_only=True, frozen=True):
    actor: str


class DeleteRun(msgspec.Struct, kw_only=True, frozen=True):
    actor: str


class UpdateRun(msgspec.Struct, kw_only=True, frozen=True):
    actor: str
    priority: Priority | None = None
    preemptible: bool | None = None
    max_retries: int | None = None
    retry_on_system_failure: bool | None = None
    max_duration: float | None = None


class UpdateMetadata(msgspec.Struct, kw_only=True, frozen=True):
    actor: str
    metadata: dict[str, Any]
    #: The server's limit on the run's merged metadata, in bytes of JSON (None: none). The
    #: API sets it from its settings; it is never read from a client.
    max_bytes: int | None = None


Command = SubmitRun | StopRun | RestartRun | DeleteRun | UpdateRun | UpdateMetadata


def stopped_by(actor: str, why: str = "") -> Reason:
    return Reason(category="stopped", code="Stopped", message=why or f"stopped by {actor}")


def decide(state: RunState | None, command: Command, new_id: NewId) -> list[AnyRunEvent]:
    if isinstance(command, SubmitRun):
        if state is not None:
            raise RequestRefused(command.name, "a run with this id exists already")
        return [
            RunSubmitted(
                id=new_id(),
                actor=command.actor,
                run_id=command.run_id,
                name=command.name,
                spec=command.spec,
                parent=command.parent,
            )
        ]
    if state is None:
        raise RequestRefused("?", "the run does not exist")
    if state.deleted or state.delete_requested:
        raise RunIsDeleted(state.name)
    match command:
        case StopRun():
            return _stop(state, command.actor, command.reason, new_id)
        case RestartRun():
            latest = state.latest
            if not latest.status.is_terminal():
                raise RequestRefused(
                    state.name,
                    f"it is {latest.status.display_name}; stop it first, then restart it",
                )
            return [_envelope(RestartRequested, state, command.actor, new_id, latest.index + 1)]
        case DeleteRun():
            status = state.status
            events: list[AnyRunEvent] = [_envelope(DeleteRequested, state, command.actor, new_id)]
            if status is not RunStatus.TERMINATING and not status.is_terminal():
                events += _stop(state, command.actor, "deleted", new_id)
            if status.is_terminal() or status.is_waiting():
                events.append(_envelope(RunDeleted, state, command.actor, new_id))
            return events
        case UpdateRun() | UpdateMetadata():
            return _update(state, command, new_id)
        case _:
            assert_never(command)


def _update(
    state: RunState, command: UpdateRun | UpdateMetadata, new_id: NewId
) -> list[AnyRunEvent]:
    if isinstance(command, UpdateMetadata):
        return _update_metadata(state, command, new_id)
    return [
        UpdateRequested(
            id=new_id(),
            actor=command.actor,
            run_id=state.run_id,
            attempt=state.latest.index,
            priority=command.priority,
            preemptible=command.preemptible,
            max_retries=command.max_retries,
            retry_on_system_failure=command.retry_on_system_failure,
            max_duration=command.max_duration,
        )
    ]


def _update_metadata(state: RunState, command: UpdateMetadata, new_id: NewId) -> list[AnyRunEvent]:
    """The keys whose value changes, checked against the limit; nothing if none changes."""
    current = state.spec.metadata
    changed = md.changes(current, md.carried(command.metadata))
    if not changed:
        return []
    if command.max_bytes is not None:
        check_metadata(state.name, current | changed, command.max_bytes)
    return [
        MetadataUpdated(
            id=new_id(),
            actor=command.actor,
            run_id=state.run_id,
            attempt=state.latest.index,
            metadata=changed,
        )
    ]


def _stop(state: RunState, actor: str, why: str, new_id: NewId) -> list[AnyRunEvent]:
    latest = state.latest
    status = latest.status
    if status.is_terminal() or status is RunStatus.TERMINATING:
        raise RequestRefused(state.name, f"it is {status.display_name} already; nothing to stop")
    request = StopRequested(
        id=new_id(), actor=actor, run_id=state.run_id, attempt=latest.index, reason=why
    )
    reason = stopped_by(actor, why)
    ending: AnyRunEvent
    if status.is_waiting():
        ending = AttemptStopped(
            id=new_id(), actor=actor, run_id=state.run_id, attempt=latest.index, reason=reason
        )
    else:
        ending = AttemptTerminating(
            id=new_id(), actor=actor, run_id=state.run_id, attempt=latest.index, reason=reason
        )
    return [request, ending]


def _envelope(
    cls: type[_E], state: RunState, actor: str, new_id: NewId, attempt: int | None = None
) -> _E:
    return cls(
        id=new_id(),
        actor=actor,
        run_id=state.run_id,
        attempt=state.latest.index if attempt is None else attempt,
    )
