"""Run status: one row per run with mcli's Run fields, and the indexes ``get runs`` lists by.

Invariants:
- ``status`` and ``reason`` are the latest attempt's; ``cluster``, ``gpus``, ``gpu_type`` and
  ``node_count`` are the latest placement's once an attempt was placed, the request's before.
- ``started_at`` is when the first attempt entered STARTING; ``completed_at`` when the latest
  attempt ended (None while it is open); ``updated_at`` the time of the run's latest event,
  but for a rank's setup steps that went well (image pulls, integrations) and its token: they
  change nothing a user reads here, and each would rewrite the row.
- ``submitted_config`` is the RunSpec as submitted; the scheduling fields (priority,
  preemptible, max_retries, retry_on_system_failure, max_duration) follow updates.
- A deleted run keeps its row (``is_deleted``) and its index entries; listings filter it out.
- A second row kind, ``name``, maps each run name to its run_uid.
- ``parent`` is the name of the run it was submitted from (mcli's ``parentName``), if any.
- Indexes, every one scored by ``created_at``: ``created`` (every run), ``user:<user>``,
  ``cluster:<cluster>`` (the requested cluster), ``parent:<run name>`` (a child run's, under
  its parent) and ``status:<STATUS>`` (exactly one: the fold
  remembers which one each stored row is in, from its renders and, after a restart, from
  ``settled``, and moves it when the status changes).
- An event for a run it does not know, or for an attempt that is not the latest, is logged and
  skipped.
- A run at rest (its latest attempt ended) may leave memory (``evict_resting``) and come back
  from its row (``restore``): the row holds the whole of the fold's state of the run.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, ClassVar

import msgspec

from events import model as ev
from events.codec import Recorded
from events.spec import RunSpec
from events.status import RunStatus
from projections.base import LetsRunsGo, Row, RowKey, encode, skipped

KIND = "run"
NAME_KIND = "name"  # run name -> run_uid
S = RunStatus


class _RunFields(msgspec.Struct, kw_only=True, gc=False):
    run_uid: str
    name: str
    status: RunStatus
    reason: ev.Reason | None = None
    created_at: int
    updated_at: int
    started_at: int | None = None
    completed_at: int | None = None
    created_by: str
    priority: str
    preemptible: bool
    max_retries: int
    retry_on_system_failure: bool
    max_duration: float | None
    cluster: str
    gpus: int
    gpu_type: str | None
    cpus: int
    node_count: int
    image: str
    metadata: dict[str, Any]
    is_deleted: bool = False
    resumption_count: int = 1
    requested_cluster: str = ""  # the submitted config's cluster (the index's)
    parent: str | None = None

    @property
    def latest_resumption(self) -> int:
        return self.resumption_count - 1


class RunRow(_RunFields, kw_only=True, gc=False):
    """mcli's Run object, as ``get_run`` returns it."""

    submitted_config: RunSpec


class _RunState(_RunFields, kw_only=True, gc=False):
    """The fold's own copy: the submitted config kept encoded (smaller, written verbatim)."""

    submitted_config: msgspec.Raw


_decoder = msgspec.json.Decoder(_RunState)


class _Indexed(msgspec.Struct, gc=False):
    """What a stored row says of the indexes it is in, and of its name."""

    name: str
    status: RunStatus
    created_at: int
    created_by: str
    requested_cluster: str = ""
    parent: str | None = None


_stored_decoder = msgspec.json.Decoder(_Indexed)


def new_row(event: ev.RunSubmitted) -> _RunState:
    spec = event.spec
    compute, scheduling = spec.compute, spec.scheduling
    return _RunState(
        run_uid=event.run_id,
        name=event.name,
        status=S.PENDING,
        created_at=event.time,
        updated_at=event.time,
        created_by=event.actor,
        priority=scheduling.priority,
        preemptible=scheduling.preemptible,
        max_retries=scheduling.max_retries,
        retry_on_system_failure=scheduling.retry_on_system_failure,
        max_duration=scheduling.max_duration,
        cluster=compute.cluster,
        gpus=compute.gpus,
        gpu_type=compute.gpu_type,
        cpus=compute.cpus or 0,
        node_count=compute.nodes or 1,
        image=spec.image,
        metadata=spec.metadata,
        submitted_config=msgspec.Raw(encode(spec)),
        requested_cluster=compute.cluster,
        parent=event.parent,
    )


class _Memory(msgspec.Struct, gc=False):
    """What the fold holds, as the runner keeps it (``projections.base.Resumable``)."""

    runs: dict[str, _RunState]
    indexed: dict[str, RunStatus]
    _keys: dict[str, tuple[RowKey]]
    _resting: dict[str, int]


class RunStatusProjection(LetsRunsGo):
    name: ClassVar[str] = "run_status"
    Memory: ClassVar[type[msgspec.Struct]] = _Memory
    memory_in_json: ClassVar[bool] = True  # the configs, kept as JSON (``msgspec.Raw``)
    version: ClassVar[int] = 3  # 2: metadata updated after the submit; 3: a run's parent
    handles: ClassVar[frozenset[type]] = frozenset(ev.RUN_EVENT_TYPES) - {
        ev.ImagePullStarted,
        ev.ImagePullFinished,
        ev.IntegrationStarted,
        ev.IntegrationFinished,
        ev.RunTokenIssued,
    }

    def __init__(self) -> None:
        self.runs: dict[str, _RunState] = {}
        #: The status index each run's stored row is in (to move it when its status changes).
        self.indexed: dict[str, RunStatus] = {}
        self._keys: dict[str, tuple[RowKey]] = {}  # per run, its row's key (built once)
        #: Runs that came to rest (log time, ms), the earliest first, to let go later.
        self._resting: dict[str, int] = {}

    def apply(self, record: Recorded) -> Collection[RowKey]:
        event: Any = record.event  # a run event (``handles``), dispatched on its exact type
        kind = type(event)
        if kind is ev.RunSubmitted:
            if event.run_id in self.runs:
                return skipped(self.name, record, "the run exists already")
            self.runs[event.run_id] = new_row(event)
            self._keys[event.run_id] = ((KIND, event.run_id),)
            return ((KIND, event.run_id), (NAME_KIND, event.run_id))
        handler = _HANDLERS.get(kind, _touch)
        row = self.runs.get(event.run_id)
        if row is None:
            return skipped(self.name, record, "unknown run")
        if kind not in _ANY_ATTEMPT and event.attempt != row.resumption_count - 1:
            return skipped(self.name, record, "not the latest attempt")
        why = handler(row, event)
        if why:
            return skipped(self.name, record, why)
        row.updated_at = event.time
        if row.status.is_terminal():
            self._resting.setdefault(event.run_id, event.time)
        return self._keys[event.run_id]

    def rows(self, keys: Iterable[RowKey]) -> Iterable[Row]:
        indexed = self.indexed
        for kind, run_id in keys:
            row = self.runs.get(run_id)
            if row is None:
                continue
            if kind == NAME_KIND:
                yield Row(kind=NAME_KIND, id=row.name, body=encode(run_id))
                continue
            score = row.created_at
            before = indexed.get(run_id)
            indexed[run_id] = row.status
            index: tuple[tuple[str, int], ...]
            unindex: tuple[str, ...]
            if before is None:  # first stored: every index (the first three never change)
                index, unindex = _indexes(row), ()
            elif before is not row.status:
                index, unindex = ((_STATUS_INDEX[row.status], score),), (_STATUS_INDEX[before],)
            else:
                index, unindex = (), ()
            yield Row(kind=KIND, id=run_id, body=encode(row), index=index, unindex=unindex)

    def settled(self, keys: Iterable[RowKey]) -> None:
        """These rows are stored as they are now (a restart folding up to its checkpoint)."""
        for kind, run_id in keys:
            if kind == KIND and (row := self.runs.get(run_id)) is not None:
                self.indexed[run_id] = row.status

    def at_rest(self, run_id: str) -> bool:
        row = self.runs.get(run_id)
        return row is not None and row.status.is_terminal()

    def forget(self, run_id: str) -> None:
        del self.runs[run_id], self._keys[run_id]
        self.indexed.pop(run_id, None)

    def holds(self, run_id: str) -> bool:
        return run_id in self.runs

    def restoring(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> list[RowKey]:
        key = (KIND, run_id)
        return [] if key in found else [key]

    def restore(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> None:
        body = found.get((KIND, run_id))
        if body is None or run_id in self.runs:
            return
        row = _decoder.decode(body)
        self.runs[run_id] = row
        self.indexed[run_id] = row.status
        self._keys[run_id] = ((KIND, run_id),)
        self._resting[run_id] = row.updated_at  # to leave again, once at rest long enough

    def as_stored(
        self, run_id: str, found: Mapping[RowKey, bytes | None]
    ) -> tuple[list[RowKey], list[Row]]:
        """Its ``run`` row in every index ``rows`` put it in (those of its first render, its
        status's), then its ``name`` row if that still names this run (a later run of the
        same name took it over otherwise: the row is that run's)."""
        key = (KIND, run_id)
        if key not in found:
            return [key], []
        body = found[key]
        if body is None:
            return [], []  # a run this fold never saw
        stored = _stored_decoder.decode(body)
        name = (NAME_KIND, stored.name)
        if name not in found:
            return [name], []
        rows = [Row(kind=KIND, id=run_id, body=body, index=_indexes(stored))]
        named = found[name]
        if named is not None and msgspec.json.decode(named) == run_id:
            rows.append(Row(kind=NAME_KIND, id=stored.name, body=named))
        return [], rows


def _indexes(row: _RunState | _Indexed) -> tuple[tuple[str, int], ...]:
    """Every index a run's row is in, as it stands: scored by its creation."""
    score = row.created_at
    index: tuple[tuple[str, int], ...] = (
        ("created", score),
        (f"user:{row.created_by}", score),
        (f"cluster:{row.requested_cluster}", score),
        (_STATUS_INDEX[row.status], score),
    )
    if row.parent is not None:
        index += ((f"parent:{row.parent}", score),)
    return index


def _touch(row: _RunState, event: Any) -> str | None:
    return None


def _new_attempt(row: _RunState, event: ev.RestartRequested | ev.RetryScheduled) -> str | None:
    if event.attempt != row.resumption_count or not row.status.is_terminal():
        return "not the next attempt"
    row.resumption_count += 1
    row.status, row.reason, row.completed_at = S.PENDING, None, None
    return None


def _queued(row: _RunState, event: ev.AttemptQueued) -> str | None:
    row.status = S.QUEUED
    return None


def _scheduled(row: _RunState, event: ev.AttemptScheduled) -> str | None:
    row.status = S.STARTING
    row.cluster, row.gpu_type = event.cluster, event.gpu_type
    row.gpus = sum(len(rank.gpus) for rank in event.ranks)
    row.node_count = len(event.ranks)
    if row.started_at is None:
        row.started_at = event.time
    return None


def _running(row: _RunState, event: ev.AttemptRunning) -> str | None:
    row.status = S.RUNNING
    return None


def _terminating(row: _RunState, event: ev.AttemptTerminating) -> str | None:
    row.status, row.reason = S.TERMINATING, event.reason
    return None


def _ended(
    row: _RunState, event: ev.AttemptCompleted | ev.AttemptStopped | ev.AttemptFailed
) -> str | None:
    row.status = _ENDS[type(event)]
    row.reason, row.completed_at = getattr(event, "reason", None), event.time
    return None


def _deleted(row: _RunState, event: ev.RunDeleted) -> str | None:
    row.is_deleted = True
    return None


def _update(row: _RunState, event: ev.UpdateRequested) -> str | None:
    if event.priority is not None:
        row.priority = event.priority
    if event.preemptible is not None:
        row.preemptible = event.preemptible
    if event.max_retries is not None:
        row.max_retries = event.max_retries
    if event.retry_on_system_failure is not None:
        row.retry_on_system_failure = event.retry_on_system_failure
    if event.max_duration is not None:
        row.max_duration = event.max_duration
    return None


def _metadata(row: _RunState, event: ev.MetadataUpdated) -> str | None:
    row.metadata = row.metadata | event.metadata
    return None


_ENDS = {ev.AttemptCompleted: S.COMPLETED, ev.AttemptStopped: S.STOPPED, ev.AttemptFailed: S.FAILED}
#: Events whose attempt is not the latest one's: a new attempt's, or run-level requests.
_ANY_ATTEMPT = frozenset(
    {ev.RestartRequested, ev.RetryScheduled, ev.UpdateRequested, ev.MetadataUpdated, ev.RunDeleted}
)
_ANY_ATTEMPT |= {ev.StopRequested, ev.DeleteRequested}
_HANDLERS: dict[type, Callable[[_RunState, Any], str | None]] = {
    ev.RestartRequested: _new_attempt,
    ev.RetryScheduled: _new_attempt,
    ev.AttemptQueued: _queued,
    ev.AttemptScheduled: _scheduled,
    ev.AttemptRunning: _running,
    ev.AttemptTerminating: _terminating,
    ev.AttemptCompleted: _ended,
    ev.AttemptStopped: _ended,
    ev.AttemptFailed: _ended,
    ev.UpdateRequested: _update,
    ev.MetadataUpdated: _metadata,
    ev.RunDeleted: _deleted,
}
_STATUS_INDEX = {status: f"status:{status}" for status in RunStatus}
