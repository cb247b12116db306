"""Audit: who did what to which run, and when, for users and for the services' decisions.

Rows: ``entry`` ``<run_id>#<n>`` (the run's n-th entry, from 0), ``node:<node>#<n>`` or
``user:<name>#<n>``, in the
index ``actor:<actor>`` scored by the log's time, so a user's actions (or a service's
decisions, ``scheduler@host``) in a time window are one range read, and a run's trail is a read
of ``<run_id>#0`` onwards until one is missing. Everyone's entries in a time window are the
log's own range (``entry_of`` each event): the log is ordered by time already, and an index of
every entry would double what a rebuild writes.

Audited: requests (submitted, stop, restart, update, delete), the scheduler's and agents'
decisions on attempts (queued, scheduled, running, terminating, ended, retried, deleted), node
events (cordon, drain, uncordon: the admin as actor, the reason as detail), and users and
their keys (added, issued, revoked: the key's id and expiry, never its hash); not the per-rank
setup chatter (image pulls, integrations, a rank's start).
A refused request about a run (``request.refused`` with a run id) is its user's event, on the
user's partition of the log, not the run's: the projector may fold it before or after any of
the run's events, and refusals by two users in either order (``projections.engine``). So it is
not numbered in the run's trail but keyed by its event id, ``<run_id>!<event id>``, in the
index ``refused:<run_id>`` scored by the log's time; a run's trail is its numbered entries and
those, by time.

Invariants: nothing is ever removed (deleted runs stay); each trail's numbered entries are in
the order of its partition's log.

A run at rest (its latest attempt ended, and no restart or retry since) may leave memory, its
name and its count of entries (``evict_resting``), and come back from its numbered entries
(``restore``): their count is the first ``<run_id>#<n>`` not stored, and the latest one's
``run_name`` is the name the fold knew then (a name never changes once known, and every entry
of the run carries it). The trails of nodes and users stay: there are only so many.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, ClassVar, cast

import msgspec

from events.codec import Recorded
from events.lifecycle import clean_exit
from events.model import (
    ALL_EVENT_TYPES,
    ATTEMPT_ENDS,
    AttemptFailed,
    AttemptQueued,
    AttemptScheduled,
    AttemptStopped,
    AttemptTerminating,
    ImagePullFinished,
    ImagePullStarted,
    IntegrationFinished,
    IntegrationStarted,
    KeyIssued,
    KeyRevoked,
    MetadataUpdated,
    NodeCordoned,
    NodeDrained,
    NodeDrainRequested,
    NodeEvent,
    NodeGpuFailed,
    NodeRegistered,
    RankExited,
    RankPlacement,
    RankRunning,
    RequestRefused,
    RestartRequested,
    RetryScheduled,
    RunEvent,
    RunSubmitted,
    RunTokenIssued,
    SecretCreated,
    SecretDeleted,
    StopRequested,
    UpdateRequested,
    UserAdded,
    UserEvent,
    tag_of,
)
from projections.base import LetsRunsGo, Row, RowKey, encode


class Entry(msgspec.Struct, kw_only=True, frozen=True, gc=False, omit_defaults=True):
    position: str
    time: int
    actor: str
    action: str  # the event's tag: run.stop_requested, attempt.scheduled, node.lost, ...
    run_id: str | None = None
    run_name: str | None = None
    attempt: int | None = None
    node: str | None = None
    user: str | None = None  # the user an identity event is about (the actor is who did it)
    detail: str = ""
    via: str | None = None  # "run NAME attempt N": the run whose token acted for ``actor``


_decoder = msgspec.json.Decoder(Entry)


class _Memory(msgspec.Struct, gc=False):
    """What the fold holds, as the runner keeps it (``projections.base.Resumable``)."""

    names: dict[str, str]
    counts: dict[str, int]
    pending: dict[str, Entry]
    _resting: dict[str, int]


class AuditProjection(LetsRunsGo):
    name: ClassVar[str] = "audit"
    Memory: ClassVar[type[msgspec.Struct]] = _Memory
    #: 5: refused requests; 6: run tokens, and who acted via one; 7: cordon, drain; 8: the GPUs
    #: of a placement by UUID, and failed GPUs; 9: a run's refusals keyed by event id.
    version: ClassVar[int] = 9
    handles: ClassVar[frozenset[type]]  # every event type but the quiet ones (below)

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.counts: dict[str, int] = {}  # entries so far per run or node
        self.pending: dict[str, Entry] = {}  # entries not yet rendered nor settled
        self._actor_index: dict[str, str] = {}
        #: Runs at rest (log time, ms), the earliest first, to let go later; a restart or a
        #: retry takes a run out.
        self._resting: dict[str, int] = {}

    def apply(self, record: Recorded) -> Collection[RowKey]:
        event = record.event
        if type(event) is RunSubmitted:
            self.names.setdefault(event.run_id, event.name)
        elif type(event) in _ENDS:
            self._resting.setdefault(cast(RunEvent, event).run_id, event.time)
        elif type(event) in _REOPENS:
            self._resting.pop(cast(RunEvent, event).run_id, None)
        entry = entry_of(record, self.names)
        if entry is None:
            return ()
        if type(event) is RequestRefused and event.run_id is not None:
            key = refusal_key(event.run_id, event.id)
            self.pending[key] = entry
            return (("entry", key),)
        owner = owner_of(entry)
        seq = self.counts.get(owner, 0)
        self.counts[owner] = seq + 1
        key = f"{owner}#{seq}"
        self.pending[key] = entry
        return (("entry", key),)

    def rows(self, keys: Iterable[RowKey]) -> Iterable[Row]:
        for kind, key in keys:
            entry = self.pending.pop(key, None) if kind == "entry" else None
            if entry is None:
                continue
            actor_index = self._actor_index.get(entry.actor)
            if actor_index is None:
                actor_index = self._actor_index[entry.actor] = f"actor:{entry.actor}"
            index: tuple[tuple[str, int], ...] = ((actor_index, entry.time),)
            if entry.action == _REFUSED and entry.run_id is not None:
                index += ((refusals_index(entry.run_id), entry.time),)
            yield Row(kind=kind, id=key, body=encode(entry), index=index)

    def settled(self, keys: Iterable[RowKey]) -> None:
        """These rows are stored as they are (folded again after a restart): forget them."""
        for _, key in keys:
            self.pending.pop(key, None)

    def at_rest(self, run_id: str) -> bool:
        return run_id in self._resting and run_id in self.counts

    def forget(self, run_id: str) -> None:
        del self.counts[run_id]
        self.names.pop(run_id, None)

    def holds(self, run_id: str) -> bool:
        return run_id in self.counts

    def restoring(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> list[RowKey]:
        """Its numbered entries, ``_RESTORE_PAGE`` at a time, until one is missing."""
        return [] if run_id in self.counts else _numbered_to_read(run_id, found)

    def restore(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> None:
        if run_id in self.counts:
            return
        n = 0
        while (body := found.get(("entry", f"{run_id}#{n}"))) is not None:
            latest, n = body, n + 1
        if n == 0:
            return  # a run it never saw
        entry = _decoder.decode(latest)
        self.counts[run_id] = n
        if entry.run_name is not None:
            self.names[run_id] = entry.run_name
        self._resting[run_id] = entry.time  # at rest still: to leave again, once long enough

    def as_stored(
        self, run_id: str, found: Mapping[RowKey, bytes | None]
    ) -> tuple[list[RowKey], list[Row]]:
        """Its numbered entries (read as ``restoring`` reads them), each in the index of its
        actor scored by its time. Not the refusals about the run (``refusal_key``, in
        ``refused:<run_id>``): a user's events, folded in any order with the run's, they stay
        in the store."""
        if wanted := _numbered_to_read(run_id, found):
            return wanted, []
        rows: list[Row] = []
        while (body := found.get(key := ("entry", f"{run_id}#{len(rows)}"))) is not None:
            entry = _decoder.decode(body)
            index: tuple[tuple[str, int], ...] = ((f"actor:{entry.actor}", entry.time),)
            if entry.action == _REFUSED and entry.run_id is not None:
                index += ((refusals_index(entry.run_id), entry.time),)
            rows.append(Row(kind="entry", id=key[1], body=body, index=index))
        return [], rows


def _numbered_to_read(run_id: str, found: Mapping[RowKey, bytes | None]) -> list[RowKey]:
    """A run's numbered entries still to read, ``_RESTORE_PAGE`` at a time, until one is
    missing."""
    n = 0
    while (key := ("entry", f"{run_id}#{n}")) in found:
        if found[key] is None:
            return []
        n += 1
    return [("entry", f"{run_id}#{i}") for i in range(n, n + _RESTORE_PAGE)]


def entry_of(record: Recorded, names: Mapping[str, str]) -> Entry | None:
    """The audit entry of a recorded event (None: not audited); ``names``: run names by id."""
    event = record.event
    kind = type(event)
    if kind in _QUIET or (kind is RankExited and _clean_exit(event)):
        return None
    detail = _DETAILS.get(kind)
    run_id = run_name = attempt = node = user = None
    if isinstance(event, RunEvent):
        run_id, run_name, attempt = event.run_id, names.get(event.run_id), event.attempt
        node = getattr(event, "node", None)
    elif isinstance(event, RequestRefused) and event.run_id is not None:  # the run's trail
        # The run as the user named it: whether its submission was folded yet depends on the
        # interleaving of the partitions (see above).
        run_id, run_name = event.run_id, event.target
    elif isinstance(event, UserEvent):
        user = event.user
    else:
        assert isinstance(event, NodeEvent)
        node = event.node
    return Entry(
        position=record.position,
        time=event.time,
        actor=sys.intern(event.actor),  # one string per actor, not one per entry
        action=_TAGS[kind],
        run_id=run_id,
        run_name=run_name,
        attempt=attempt,
        node=node,
        user=user,
        detail=detail(event) if detail else "",
        via=None if event.via is None else str(event.via),
    )


def refusal_key(run_id: str, event_id: str) -> str:
    """The row of a refused request about run ``run_id`` (``event_id``: its event's)."""
    return f"{run_id}!{event_id}"


def refusals_index(run_id: str) -> str:
    """The index of the refused requests about run ``run_id``."""
    return f"refused:{run_id}"


def owner_of(entry: Entry) -> str:
    """Whose trail an entry is in: its run's, its node's (``node:<node>``) or its user's
    (``user:<name>``)."""
    if entry.run_id is not None:
        return entry.run_id
    return f"user:{entry.user}" if entry.user is not None else f"node:{entry.node}"


def _clean_exit(event: object) -> bool:
    return isinstance(event, RankExited) and clean_exit(event.exit_code, event.reason)


def _changes(event: UpdateRequested) -> str:
    return ", ".join(f"{field}={value}" for field, value in event.changes().items())


def _reason(event: AttemptTerminating | AttemptStopped | AttemptFailed) -> str:
    return str(event.reason) if event.reason is not None else ""


def _placed(rank: RankPlacement) -> str:
    """``n1:2`` and, where the placement named them, the physical GPUs: ``n1:2 (GPU-a GPU-b)``."""
    uuids = f" ({' '.join(rank.gpu_uuids)})" if rank.gpu_uuids else ""
    return f"{rank.node}:{len(rank.gpus)}{uuids}"


def _key(event: KeyIssued) -> str:
    expiry = f", expires at {event.expires_at}" if event.expires_at is not None else ""
    return f"key {event.key_id}{expiry}"


_ENDS = ATTEMPT_ENDS
_REOPENS = frozenset({RestartRequested, RetryScheduled})
#: Numbered entries read at a time to restore a run (most runs have fewer).
_RESTORE_PAGE = 16
_QUIET = frozenset(
    {ImagePullStarted, ImagePullFinished, IntegrationStarted, IntegrationFinished, RankRunning}
)
AuditProjection.handles = frozenset(ALL_EVENT_TYPES) - _QUIET
_TAGS = {cls: tag_of(cls) for cls in ALL_EVENT_TYPES}
_REFUSED = _TAGS[RequestRefused]
_DETAILS: dict[type, Callable[[Any], str]] = {
    RunSubmitted: lambda e: f"{e.name} on {e.spec.compute.cluster}, {e.spec.compute.gpus} GPUs",
    StopRequested: lambda e: e.reason,
    UpdateRequested: _changes,
    MetadataUpdated: lambda e: "keys " + ", ".join(sorted(e.metadata)),
    RequestRefused: lambda e: f"{e.request} {e.target}: {e.code} {e.why}",
    RetryScheduled: lambda e: e.cause,
    AttemptQueued: lambda e: e.reason,
    AttemptScheduled: lambda e: ", ".join(_placed(r) for r in e.ranks),
    AttemptTerminating: _reason,
    AttemptStopped: _reason,
    AttemptFailed: _reason,
    RankExited: lambda e: f"rank {e.rank} {e.ending}" + (f" ({e.reason.code})" if e.reason else ""),
    RunTokenIssued: lambda e: f"rank {e.rank} on {e.node}, token {e.token_id}",
    NodeRegistered: lambda e: f"{e.gpus}x{e.gpu_type or 'cpu'}",
    NodeDrained: lambda e: e.reason,
    NodeCordoned: lambda e: e.reason,
    NodeDrainRequested: lambda e: (
        e.reason + ("" if e.grace_ms is None else f" (deadline in {e.grace_ms // 1000} s)")
    ),
    NodeGpuFailed: lambda e: e.what,
    UserAdded: lambda e: e.role,
    KeyIssued: _key,
    KeyRevoked: lambda e: f"key {e.key_id}",
    SecretCreated: lambda e: f"secret {e.name} ({e.secret_type})",
    SecretDeleted: lambda e: f"secret {e.name} ({e.secret_type})",
}
