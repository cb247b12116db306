"""Audit: who did what to which run, and when, for users and for the services' decisions.

Rows: ``entry`` ``<run_id>#<n>`` (the run's n-th entry) or ``node:<node>#<n>``, in the
indexes ``all`` and ``actor:<actor>`` scored by the log's time, so a user's actions (or a
service's decisions, ``scheduler@host``) in a time window are one range read; ``count``
``<run_id>`` (or ``node:<node>``) says how many entries it has, so its trail is one read of
``<run_id>#0`` to ``#<count - 1>``.

Audited: requests (submitted, stop, restart, update, delete), the scheduler's and agents'
decisions on attempts (queued, scheduled, running, terminating, ended, retried, deleted), and
node events; not the per-rank setup chatter (image pulls, integrations, a rank's start).
Invariants: nothing is ever removed (deleted runs stay); entries are in log order.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any, ClassVar

import msgspec

from events.codec import Recorded
from events.model import (
    ALL_EVENT_TYPES,
    AttemptFailed,
    AttemptQueued,
    AttemptScheduled,
    AttemptStopped,
    AttemptTerminating,
    ImagePullFinished,
    ImagePullStarted,
    IntegrationFinished,
    IntegrationStarted,
    NodeDrained,
    NodeEvent,
    NodeRegistered,
    RankExited,
    RankRunning,
    RetryScheduled,
    RunEvent,
    RunSubmitted,
    StopRequested,
    UpdateRequested,
    tag_of,
)
from projections.base import Row, RowKey, encode


class Entry(msgspec.Struct, kw_only=True, frozen=True, gc=False, omit_defaults=True):
    position: str
    time: int
    actor: str
    action: str  # the event's tag: run.stop_requested, attempt.scheduled, node.lost, ...
    run_id: str | None = None
    run_name: str | None = None
    attempt: int | None = None
    node: str | None = None
    detail: str = ""


class AuditProjection:
    name: ClassVar[str] = "audit"
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.counts: dict[str, int] = {}  # entries so far per run or node
        self.pending: dict[str, Entry] = {}  # entries not yet rendered nor settled
        self._strings: dict[str, str] = {}  # one string per actor, not one per event
        self._actor_index: dict[str, str] = {}

    def apply(self, record: Recorded) -> Collection[RowKey]:
        event = record.event
        kind = type(event)
        if kind in _QUIET or (kind is RankExited and _clean_exit(event)):
            return ()
        detail = _DETAILS.get(kind)
        actor = self._strings.setdefault(event.actor, event.actor)
        if isinstance(event, RunEvent):
            if isinstance(event, RunSubmitted):
                self.names.setdefault(event.run_id, event.name)
            owner = event.run_id
            entry = Entry(
                position=record.position,
                time=event.time,
                actor=actor,
                action=_TAGS[kind],
                run_id=event.run_id,
                run_name=self.names.get(event.run_id),
                attempt=event.attempt,
                node=getattr(event, "node", None),
                detail=detail(event) if detail else "",
            )
        else:
            assert isinstance(event, NodeEvent)
            owner = f"node:{event.node}"
            entry = Entry(
                position=record.position,
                time=event.time,
                actor=actor,
                action=_TAGS[kind],
                node=event.node,
                detail=detail(event) if detail else "",
            )
        seq = self.counts.get(owner, 0)
        self.counts[owner] = seq + 1
        key = f"{owner}#{seq}"
        self.pending[key] = entry
        return (("entry", key), ("count", owner))

    def rows(self, keys: Iterable[RowKey]) -> Iterable[Row]:
        for kind, key in keys:
            if kind == "count":
                yield Row(kind=kind, id=key, body=encode(self.counts[key]))
                continue
            entry = self.pending.pop(key, None) if kind == "entry" else None
            if entry is None:
                continue
            score = entry.time
            actor_index = self._actor_index.get(entry.actor)
            if actor_index is None:
                actor_index = self._actor_index[entry.actor] = f"actor:{entry.actor}"
            index = (("all", score), (actor_index, score))
            yield Row(kind=kind, id=key, body=encode(entry), index=index)

    def settled(self, keys: Iterable[RowKey]) -> None:
        """These rows are stored as they are (folded again after a restart): forget them."""
        for _, key in keys:
            self.pending.pop(key, None)


def _clean_exit(event: object) -> bool:
    return isinstance(event, RankExited) and event.exit_code == 0 and event.reason is None


def _changes(event: UpdateRequested) -> str:
    fields = ("priority", "preemptible", "max_retries", "retry_on_system_failure")
    changes = [f"{f}={v}" for f in fields if (v := getattr(event, f)) is not None]
    if event.max_duration is not None:
        changes.append(f"max_duration={event.max_duration}")
    return ", ".join(changes)


def _reason(event: AttemptTerminating | AttemptStopped | AttemptFailed) -> str:
    return str(event.reason) if event.reason is not None else ""


_QUIET = frozenset(
    {ImagePullStarted, ImagePullFinished, IntegrationStarted, IntegrationFinished, RankRunning}
)
_TAGS = {cls: tag_of(cls) for cls in ALL_EVENT_TYPES}
_DETAILS: dict[type, Callable[[Any], str]] = {
    RunSubmitted: lambda e: f"{e.name} on {e.spec.compute.cluster}, {e.spec.compute.gpus} GPUs",
    StopRequested: lambda e: e.reason,
    UpdateRequested: _changes,
    RetryScheduled: lambda e: e.cause,
    AttemptQueued: lambda e: e.reason,
    AttemptScheduled: lambda e: ", ".join(f"{r.node}:{len(r.gpus)}" for r in e.ranks),
    AttemptTerminating: _reason,
    AttemptStopped: _reason,
    AttemptFailed: _reason,
    RankExited: lambda e: f"rank {e.rank} exit code {e.exit_code}",
    NodeRegistered: lambda e: f"{e.gpus}x{e.gpu_type or 'cpu'}",
    NodeDrained: lambda e: e.reason,
}
