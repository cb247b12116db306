"""Attempts (mcli: resumptions): every attempt of every run, as ``describe run`` prints it.

One row per attempt (id ``<run_id>:<index>``), in the index ``run:<run_id>`` scored by the
attempt index. The fold keeps each attempt's row itself and updates it in place.

Invariants:
- Phases move as the lifecycle rules (``events.lifecycle``) say; an event the rules would
  refuse (a phase out of order, another attempt's event, an unknown rank) is logged and
  skipped. The unit tests check this fold against ``events.lifecycle.fold`` on random
  histories: same status, same timeline, same ranks.
- ``phases`` lists every phase the attempt entered, in order, with the time it entered and
  left it (None while it is in it) and the duration; ``queue_ms`` (PENDING + QUEUED),
  ``setup_ms`` (STARTING), ``run_ms`` (RUNNING) and ``cleanup_ms`` (TERMINATING) sum a phase
  group's durations once the attempt has left it (None before).
- ``first_failed_rank`` is the rank whose failing exit came first in the log (else the rank
  the attempt's reason names). ``stopped_by`` is who asked for the stop (or who stopped it).
- ``events`` are the human lines of ``describe run``'s event log, in log order; run-level
  requests (update, delete) go to the latest attempt.
- A run at rest (its latest attempt ended) may leave memory (``evict_resting``) and come back
  from its attempts' rows (``restore``): the rows hold the whole of the fold's state of it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, ClassVar

import msgspec

from events import model as ev
from events.codec import Recorded
from events.lifecycle import ENTERED_FROM, clean_exit
from events.status import RunStatus
from projections.base import LetsRunsGo, Row, RowKey, encode, skipped
from projections.narrative import describe

KIND = "attempt"
S = RunStatus
_GROUP = {S.PENDING: "queue_ms", S.QUEUED: "queue_ms", S.STARTING: "setup_ms"}
_GROUP |= {S.RUNNING: "run_ms", S.TERMINATING: "cleanup_ms"}


class HumanEvent(msgspec.Struct, array_like=True, frozen=True, gc=False):
    time: int
    attempt: int
    text: str
    actor: str


class Phase(msgspec.Struct, kw_only=True, gc=False):
    status: RunStatus
    entered_at: int
    left_at: int | None = None
    duration_ms: int | None = None


class RankRow(msgspec.Struct, kw_only=True, gc=False):
    rank: int
    node: str
    gpus: list[int]
    #: The physical GPUs by UUID, in the order of ``gpus``; empty where the placement named none.
    gpu_uuids: list[str] = msgspec.field(default_factory=list)
    status: RunStatus = S.STARTING
    #: When its command started (``rank.running``); kept after it exits, as the rules keep it.
    started_at: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    exited_at: int | None = None
    #: Its GPUs' mean utilization (%) and peak memory (MiB) while it ran, as its node sampled.
    gpu_utilization: int | None = None
    gpu_memory_peak_mib: int | None = None


class AttemptRow(msgspec.Struct, kw_only=True, gc=False):
    run_id: str
    run_name: str
    index: int
    status: RunStatus
    opened_at: int
    opened_by: str
    opened_how: str  # submitted | restart | retry
    retry_cause: str | None = None
    cluster: str | None = None
    gpu_type: str | None = None
    gpus: int = 0
    node_count: int = 0
    ranks: list[RankRow] = msgspec.field(default_factory=list)
    phases: list[Phase] = msgspec.field(default_factory=list)
    queue_ms: int | None = None
    setup_ms: int | None = None
    run_ms: int | None = None
    cleanup_ms: int | None = None
    started_at: int | None = None
    ended_at: int | None = None
    reason: ev.Reason | None = None
    reason_text: str = ""
    first_failed_rank: int | None = None
    stopped_by: str | None = None
    stop_requested_by: str | None = None
    events: list[HumanEvent] = msgspec.field(default_factory=list)


Handler = Callable[[Any, AttemptRow, Any], str | None]


class _Memory(msgspec.Struct, gc=False):
    """What the fold holds, as the runner keeps it (``projections.base.Resumable``)."""

    runs: dict[str, list[AttemptRow]]
    indexed: set[str]
    _keys: dict[str, list[tuple[RowKey]]]
    _resting: dict[str, int]


class AttemptsProjection(LetsRunsGo):
    name: ClassVar[str] = "attempts"
    Memory: ClassVar[type[msgspec.Struct]] = _Memory
    #: 2: a rank that exited before ``attempt.running`` no longer makes the fold skip it.
    #: 3: a rank's end names the signal that ended it ("ended by signal 15 (stopped by x)").
    #: 4: a waiting attempt's gpus, gpu_type and node_count are the shape it was queued with.
    #: 5: a measured image pull (its size and time) is a line of the event log.
    #: 6: a rank names its physical GPUs by UUID.
    #: 7: a rank's GPU usage (mean utilization, peak memory) from its rank.exited.
    version: ClassVar[int] = 7
    #: Run events but a setup step that went well (it changes no row: its rank is only
    #: checked), except a finished pull, which may say what it measured.
    handles: ClassVar[frozenset[type]]

    def __init__(self) -> None:
        self.runs: dict[str, list[AttemptRow]] = {}
        self.indexed: set[str] = set()  # attempt rows stored (and so in their run's index)
        self._keys: dict[str, list[tuple[RowKey]]] = {}  # per run, its attempts' row keys
        #: Runs that came to rest (log time, ms), the earliest first, to let go later.
        self._resting: dict[str, int] = {}

    def apply(self, record: Recorded) -> Collection[RowKey]:  # noqa: PLR0911
        event: Any = record.event  # a run event (``handles``), dispatched on its exact type
        kind = type(event)
        attempts = self.runs.get(event.run_id)
        if kind is ev.RunSubmitted:
            if attempts is not None:
                return skipped(self.name, record, "the run exists already")
            first = _open(event, sys.intern(event.actor), event.name, "submitted")
            self.runs[event.run_id] = [first]
            self._keys[event.run_id] = [((KIND, f"{event.run_id}:0"),)]
            return self._line(record, first, describe(event))
        if attempts is None:
            return skipped(self.name, record, "unknown run")
        latest = attempts[-1]
        if kind is ev.RestartRequested or kind is ev.RetryScheduled:
            if not latest.status.is_terminal() or event.attempt != latest.index + 1:
                return skipped(self.name, record, "not the next attempt")
            how = "restart" if kind is ev.RestartRequested else "retry"
            latest = _open(event, sys.intern(event.actor), latest.run_name, how)
            latest.retry_cause = getattr(event, "cause", None)
            attempts.append(latest)
            self._keys[event.run_id].append(((KIND, f"{event.run_id}:{latest.index}"),))
            return self._line(record, latest, describe(event))
        if kind in _RUN_LEVEL:
            return self._line(record, latest, describe(event))
        if event.attempt != latest.index:
            return skipped(self.name, record, "not the current attempt")
        handler = _HANDLERS.get(kind)
        if handler is None:
            return ()
        try:
            text = handler(event, latest, event.actor)
        except _Refused as refused:
            return skipped(self.name, record, str(refused))
        if text is None and kind is ev.ImagePullFinished:
            return ()  # a pull that measured nothing changes no row
        return self._line(record, latest, text)

    def _line(self, record: Recorded, attempt: AttemptRow, text: str | None) -> Collection[RowKey]:
        if attempt.status.is_terminal():
            self._resting.setdefault(attempt.run_id, record.event.time)
        if text:
            event = record.event
            # One string per actor, not one per event (the rows hold them for a long time).
            actor = sys.intern(event.actor)
            attempt.events.append(HumanEvent(event.time, attempt.index, text, actor))
        return self._keys[attempt.run_id][attempt.index]

    def rows(self, keys: Iterable[RowKey]) -> Iterable[Row]:
        for kind, row_id in keys:
            attempt = self._attempt(kind, row_id)
            if attempt is None:
                continue
            index: tuple[tuple[str, int], ...] = ()
            if row_id not in self.indexed:  # first stored: into its run's index, once
                self.indexed.add(row_id)
                index = ((f"run:{attempt.run_id}", attempt.index),)
            yield Row(kind=KIND, id=row_id, body=encode(attempt), index=index)

    def settled(self, keys: Iterable[RowKey]) -> None:
        """These rows are stored as they are now (a restart folding up to its checkpoint)."""
        self.indexed.update(row_id for _, row_id in keys)

    def at_rest(self, run_id: str) -> bool:
        attempts = self.runs.get(run_id)
        return attempts is not None and attempts[-1].status.is_terminal()

    def forget(self, run_id: str) -> None:
        attempts = self.runs.pop(run_id)
        del self._keys[run_id]
        self.indexed.difference_update(f"{run_id}:{a.index}" for a in attempts)

    def holds(self, run_id: str) -> bool:
        return run_id in self.runs

    def restoring(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> list[RowKey]:
        """Its attempts' rows, ``_RESTORE_PAGE`` at a time, until one is missing."""
        index = 0
        while (key := (KIND, f"{run_id}:{index}")) in found:
            if found[key] is None:
                return []
            index += 1
        return [(KIND, f"{run_id}:{i}") for i in range(index, index + _RESTORE_PAGE)]

    def restore(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> None:
        if run_id in self.runs:
            return
        attempts: list[AttemptRow] = []
        while (body := found.get((KIND, f"{run_id}:{len(attempts)}"))) is not None:
            attempts.append(_decoder.decode(body))
        if not attempts:
            return
        self.runs[run_id] = attempts
        self._keys[run_id] = [((KIND, f"{run_id}:{a.index}"),) for a in attempts]
        self.indexed.update(f"{run_id}:{a.index}" for a in attempts)
        last = attempts[-1]  # to leave again, once at rest long enough
        self._resting[run_id] = last.ended_at or last.opened_at

    def as_stored(
        self, run_id: str, found: Mapping[RowKey, bytes | None]
    ) -> tuple[list[RowKey], list[Row]]:
        """Its attempts' rows (read as ``restoring`` reads them), each in ``run:<run_id>``
        scored by its index."""
        if wanted := self.restoring(run_id, found):
            return wanted, []
        rows: list[Row] = []
        while (body := found.get(key := (KIND, f"{run_id}:{len(rows)}"))) is not None:
            stored = _indexed_decoder.decode(body)
            index = ((f"run:{stored.run_id}", stored.index),)
            rows.append(Row(kind=KIND, id=key[1], body=body, index=index))
        return [], rows

    def _attempt(self, kind: str, row_id: str) -> AttemptRow | None:
        run_id, _, index_text = row_id.rpartition(":")
        attempts = self.runs.get(run_id)
        index = int(index_text)
        if attempts is None or kind != KIND or index >= len(attempts):
            return None
        return attempts[index]


_decoder = msgspec.json.Decoder(AttemptRow)


class _Indexed(msgspec.Struct, gc=False):
    """What a stored attempt's row says of the index it is in."""

    run_id: str
    index: int


_indexed_decoder = msgspec.json.Decoder(_Indexed)
#: Attempts' rows read at a time to restore a run (most runs have one or two).
_RESTORE_PAGE = 4


class _Refused(Exception):
    """The rules would refuse this event (the fold skips it)."""


def _open(event: ev.RunEvent, actor: str, name: str, how: str) -> AttemptRow:
    return AttemptRow(
        run_id=event.run_id,
        run_name=name,
        index=event.attempt,
        status=S.PENDING,
        opened_at=event.time,
        opened_by=actor,
        opened_how=how,
        phases=[Phase(status=S.PENDING, entered_at=event.time)],
    )


def _enter(attempt: AttemptRow, status: RunStatus, time: int) -> None:
    if attempt.status not in ENTERED_FROM[status]:
        raise _Refused(f"attempt {attempt.index} is {attempt.status.display_name}")
    last = attempt.phases[-1]
    last.left_at, last.duration_ms = time, time - last.entered_at
    group = _GROUP.get(last.status)
    if group is not None and group != _GROUP.get(status):
        total = sum(p.duration_ms or 0 for p in attempt.phases if _GROUP.get(p.status) == group)
        setattr(attempt, group, total)
    attempt.phases.append(Phase(status=status, entered_at=time))
    attempt.status = status


def _queued(event: ev.AttemptQueued, attempt: AttemptRow, actor: str) -> str | None:
    requeued = attempt.status is S.QUEUED
    if event.nodes:  # the shape the scheduler judged it by, until a placement says otherwise
        attempt.node_count, attempt.gpus, attempt.gpu_type = event.nodes, event.gpus, event.gpu_type
    if not requeued:
        _enter(attempt, S.QUEUED, event.time)
    return describe(event, requeued=requeued)


def _scheduled(event: ev.AttemptScheduled, attempt: AttemptRow, actor: str) -> str | None:
    ranks = event.ranks
    if not ranks or [r.rank for r in ranks] != list(range(len(ranks))):
        raise _Refused("ranks must be numbered 0..n-1")
    _enter(attempt, S.STARTING, event.time)
    attempt.cluster, attempt.gpu_type = event.cluster, event.gpu_type
    attempt.ranks = [
        RankRow(rank=r.rank, node=r.node, gpus=list(r.gpus), gpu_uuids=list(r.gpu_uuids))
        for r in ranks
    ]
    attempt.gpus = sum(len(r.gpus) for r in ranks)
    attempt.node_count, attempt.started_at = len(ranks), event.time
    return describe(event)


def _rank(attempt: AttemptRow, index: int) -> RankRow:
    if not attempt.status.is_active():
        raise _Refused(f"attempt {attempt.index} holds no GPUs")
    if not 0 <= index < len(attempt.ranks) or attempt.ranks[index].exited_at is not None:
        raise _Refused(f"rank {index} is not live")
    return attempt.ranks[index]


def _rank_running(event: ev.RankRunning, attempt: AttemptRow, actor: str) -> str | None:
    rank = _rank(attempt, event.rank)
    if rank.started_at is not None:
        raise _Refused(f"rank {event.rank} runs already")
    rank.status, rank.started_at = S.RUNNING, event.time
    return None


def _running(event: ev.AttemptRunning, attempt: AttemptRow, actor: str) -> str | None:
    # Every rank's command started, even if some have exited since (a run of `true`): the
    # rules accept it, and the scheduler appends it so (services/scheduler/progress.py).
    if any(rank.started_at is None for rank in attempt.ranks):
        raise _Refused("not every rank runs yet")
    _enter(attempt, S.RUNNING, event.time)
    return describe(event)


def _rank_exited(event: ev.RankExited, attempt: AttemptRow, actor: str) -> str | None:
    rank = _rank(attempt, event.rank)
    reason = event.reason
    rank.exit_code, rank.signal, rank.exited_at = event.exit_code, event.signal, event.time
    rank.gpu_utilization, rank.gpu_memory_peak_mib = (
        event.gpu_utilization,
        event.gpu_memory_peak_mib,
    )
    rank.reason = str(reason) if reason is not None else ""
    if reason is not None and reason.category in ("stopped", "preempted"):
        rank.status = S.STOPPED
    elif clean_exit(event.exit_code, reason):
        rank.status = S.COMPLETED
    elif event.exit_code is None and reason is None:
        rank.status = S.STOPPED
    else:
        rank.status = S.FAILED
        if attempt.first_failed_rank is None:
            attempt.first_failed_rank = event.rank
    return describe(event) if event.exit_code or reason is not None else None


def _terminating(event: ev.AttemptTerminating, attempt: AttemptRow, actor: str) -> str | None:
    _enter(attempt, S.TERMINATING, event.time)
    _reason(attempt, event.reason, actor)
    return describe(event)


def _ended(
    event: ev.AttemptCompleted | ev.AttemptStopped | ev.AttemptFailed,
    attempt: AttemptRow,
    actor: str,
) -> str | None:
    status = _ENDS[type(event)]
    if attempt.status is S.TERMINATING and any(r.exited_at is None for r in attempt.ranks):
        raise _Refused("a rank still holds its GPUs")
    _enter(attempt, status, event.time)
    attempt.ended_at = event.time
    _reason(attempt, getattr(event, "reason", None), actor)
    return describe(event, stop_requested=attempt.stop_requested_by is not None)


def _reason(attempt: AttemptRow, reason: ev.Reason | None, actor: str) -> None:
    attempt.reason, attempt.reason_text = reason, str(reason) if reason is not None else ""
    if reason is not None:
        if attempt.first_failed_rank is None:
            attempt.first_failed_rank = reason.failed_rank
        if reason.category == "stopped" and attempt.stopped_by is None:
            attempt.stopped_by = sys.intern(actor)


def _stop(event: ev.StopRequested, attempt: AttemptRow, actor: str) -> str | None:
    if attempt.status.is_terminal() or attempt.status is S.TERMINATING:
        raise _Refused(f"attempt {attempt.index} is {attempt.status.display_name} already")
    attempt.stop_requested_by = attempt.stopped_by = sys.intern(actor)
    return describe(event)


_ENDS = {ev.AttemptCompleted: S.COMPLETED, ev.AttemptStopped: S.STOPPED, ev.AttemptFailed: S.FAILED}
_RUN_LEVEL = frozenset({ev.UpdateRequested, ev.MetadataUpdated, ev.DeleteRequested, ev.RunDeleted})
_SETUP: tuple[type, ...] = (ev.ImagePullStarted, ev.ImagePullFinished, ev.ImagePullFailed)
_SETUP += (ev.IntegrationStarted, ev.IntegrationFinished, ev.IntegrationFailed)
_HANDLERS: dict[type, Handler] = {
    ev.AttemptQueued: _queued,
    ev.AttemptScheduled: _scheduled,
    ev.RankRunning: _rank_running,
    ev.AttemptRunning: _running,
    ev.RankExited: _rank_exited,
    ev.AttemptTerminating: _terminating,
    ev.AttemptCompleted: _ended,
    ev.AttemptStopped: _ended,
    ev.AttemptFailed: _ended,
    ev.StopRequested: _stop,
}


def _setup_step(event: Any, attempt: AttemptRow, actor: str) -> str | None:
    _rank(attempt, event.rank)
    return describe(event) if type(event) in _SETUP_LINES else None


_SETUP_LINES = frozenset({ev.ImagePullFailed, ev.IntegrationFailed, ev.ImagePullFinished})
_HANDLERS |= dict.fromkeys(_SETUP, _setup_step)
AttemptsProjection.handles = frozenset(ev.RUN_EVENT_TYPES) - (
    set(_SETUP) - _SETUP_LINES | {ev.RunTokenIssued}
)
