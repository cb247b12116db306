"""The engine: feeds log entries to several projection builds and collects what to store.

Pure: no IO. The runner reads the log, feeds the entries here, stores ``batch()`` in one
transaction and then calls ``committed(batch)``.

Each build tracks two positions: ``applied`` (the last event folded into its memory) and
``stored`` (its checkpoint in the store, written in the same transaction as its rows).

Invariants:
- The duplicate guard: an entry at or before a build's ``applied`` position is skipped for that
  build (``is_new``). Redelivered entries, and the overlap between catch-up and the consumer
  group, are therefore folded once.
- After a restart the memory is rebuilt by folding the log from zero; entries at or before
  ``stored`` change memory only (their rows are stored already, and the rows stored are those
  of the state at ``stored``; a fold with ``settled`` is told which), later ones mark rows
  dirty. So the stored rows are always those of the state at the stored checkpoint.
- A fold that raises is logged and the event skipped for that fold: nothing stops the engine.
- An entry that cannot be decoded is logged and skipped by every build, the same way on every
  replay; the ones no build had stored past are kept in ``undecodable`` for the dead letters.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import structlog

from events import codec
from events.codec import Recorded
from events.errors import UndecodableEvent
from projections.base import ZERO, Position, Projection, Row, RowKey, format_position, takes
from projections.base import parse_position as parse

log = structlog.get_logger("projections.engine")
Apply = Callable[[Recorded], Collection[RowKey]]
#: A log entry's fields: a mapping, or the server's flat ``[field, value, ...]`` (cheaper).
Fields = Mapping[bytes, bytes] | list[bytes]
Settle = Callable[[Iterable[RowKey]], None]


def is_new(position: Position, applied: Position) -> bool:
    """The duplicate guard: fold an entry only if it is after what is folded already."""
    return position > applied


@dataclass
class Build:
    """One build of a projection: its fold, its namespace and where it stands."""

    projection: Projection
    namespace: str
    stored: Position = ZERO
    applied: Position = ZERO
    #: What the active pointer must hold when this build commits ("" for nothing): readers
    #: moved to another build means this one must stop writing.
    expect_active: str = ""
    #: Make this build the one readers read, at the next commit.
    activate: bool = False
    dirty: set[RowKey] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.projection.name

    @property
    def active(self) -> bool:
        return self.expect_active == self.namespace


#: A build with its fold's ``apply`` and ``settled`` (None if it has none), looked up once.
Fold = tuple[Build, Apply, Settle | None]


@dataclass(frozen=True)
class Part:
    """What one build stores in a batch."""

    name: str
    namespace: str
    expected_checkpoint: str
    checkpoint: str
    expect_active: str
    activate: bool
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Batch:
    parts: tuple[Part, ...]

    @property
    def rows(self) -> int:
        return sum(len(part.rows) for part in self.parts)


class Engine:
    def __init__(self, builds: Sequence[Build]) -> None:
        if len({build.name for build in builds}) != len(builds):
            raise ValueError("one build per projection")
        self.builds = list(builds)
        #: Entries that could not be decoded and were not stored past yet: for dead letters.
        self.undecodable: list[tuple[str, Mapping[bytes, bytes], str]] = []
        #: The latest position any build folded, and the latest any build stored.
        self._last = max((build.applied for build in self.builds), default=ZERO)
        self._stored_last = max((build.stored for build in self.builds), default=ZERO)
        #: Every build has folded up to ``_last`` (their ``applied`` is written only when read:
        #: see ``_level_up``), the usual case once the builds have caught up with each other.
        self._level = all(build.applied == self._last for build in self.builds)
        self._folds: list[Fold] = [
            (build, build.projection.apply, getattr(build.projection, "settled", None))
            for build in self.builds
        ]
        #: Per event type, the folds it goes to (a projection's ``handles``, if it has one).
        self._routes: dict[type, list[Fold]] = {}
        #: Per ``k`` field, whether some build takes that kind (if not, it is not decoded).
        self._kinds: dict[bytes, bool] = {}

    @property
    def applied(self) -> Position:
        """Every build has folded the log up to here."""
        self._level_up()
        return min((build.applied for build in self.builds), default=ZERO)

    @property
    def stored(self) -> Mapping[str, Position]:
        return {build.name: build.stored for build in self.builds}

    def feed_entry(self, position: str, fields: Fields) -> None:
        """Fold one raw log entry, decoding it only if some build has not folded it yet."""
        pos = parse(position)
        if not is_new(pos, self._last):
            if self._level or not any(is_new(pos, b.applied) for b in self.builds):
                return
        elif (
            type(fields) is list
            and len(fields) == 6
            and fields[0] == codec.KIND
            and not self._wanted(fields[1])
        ):
            self._last, self._level = pos, True  # no build takes this kind: nothing to decode
            return
        try:
            if type(fields) is list:
                record = codec.recorded_from(position, fields)
            else:
                record = codec.recorded(position, cast(Mapping[bytes, bytes], fields))
        except UndecodableEvent as exc:
            log.error("projection.undecodable", position=position, error=exc.why)  # noqa: TRY400
            if any(pos > build.stored for build in self.builds):  # new to some build
                mapping = codec.fields_of(fields) if isinstance(fields, list) else fields
                self.undecodable.append((position, mapping, exc.why))
            self._level_up()
            for build in self.builds:
                build.applied = max(build.applied, pos)
            self._last = max(self._last, pos)
            self._level = all(build.applied == self._last for build in self.builds)
            return
        self._feed(pos, record)

    def feed(self, record: Recorded) -> None:
        self._feed(parse(record.position), record)

    def _feed(self, pos: Position, record: Recorded) -> None:
        if is_new(pos, self._last):  # after everything any build folded: the usual case
            kind = type(record.event)
            route = self._routes.get(kind)
            if route is None:
                route = self._routes[kind] = [
                    f for f in self._folds if takes(f[0].projection, kind)
                ]
            self._last, self._level = pos, True  # every build is at ``pos`` now
            if pos > self._stored_last:  # new to every build: what changes is to be stored
                for build, apply, _ in route:
                    try:
                        changed = apply(record)
                    except Exception:  # noqa: BLE001 - a fold must never stop the projector
                        changed = _failed(build, record)
                    if changed:
                        build.dirty.update(changed)
                return
            self._fold(route, pos, record)  # a restart, folding up to its checkpoints
            return
        self._level_up()  # behind some build (they started from different checkpoints)
        kind = type(record.event)
        behind = []
        for fold in self._folds:
            build = fold[0]
            if is_new(pos, build.applied):
                build.applied = pos
                if takes(build.projection, kind):
                    behind.append(fold)
        self._fold(behind, pos, record)

    def _fold(self, folds: list[Fold], pos: Position, record: Recorded) -> None:
        """Fold ``record`` into ``folds``: what changes after a build's checkpoint is to be
        stored, what changes before it is stored already (``settled``)."""
        for build, apply, settle in folds:
            try:
                changed = apply(record)
            except Exception:  # noqa: BLE001 - a fold must never stop the projector
                changed = _failed(build, record)
            if not changed:
                continue
            if pos > build.stored:
                build.dirty.update(changed)
            elif settle is not None:
                settle(changed)

    def _wanted(self, kind: bytes) -> bool:
        """Whether some build takes events of ``kind`` (a ``k`` field); unknown kinds are."""
        wanted = self._kinds.get(kind)
        if wanted is None:
            event_type = codec.current_type(kind)
            wanted = event_type is None or any(takes(b.projection, event_type) for b in self.builds)
            self._kinds[kind] = wanted
        return wanted

    def _level_up(self) -> None:
        """Write down every build's ``applied`` (the fast path only moves ``_last``)."""
        if self._level:
            for build in self.builds:
                build.applied = self._last

    def batch(self) -> Batch | None:
        """What to store now (None: nothing): every build's changed rows and checkpoint.

        The rows are rendered now, so folding may go on while the batch is being stored; the
        next batch is taken only after ``committed``. A batch that could not be stored leaves
        the engine behind the store: its owner starts a new engine from the store.
        """
        self._level_up()
        parts = []
        for build in self.builds:
            if build.applied <= build.stored and not build.activate:
                continue
            rows = tuple(build.projection.rows(build.dirty))
            build.dirty = set()
            parts.append(
                Part(
                    name=build.name,
                    namespace=build.namespace,
                    expected_checkpoint=format_position(build.stored),
                    checkpoint=format_position(max(build.applied, build.stored)),
                    expect_active=build.expect_active,
                    activate=build.activate,
                    rows=rows,
                )
            )
        return Batch(tuple(parts)) if parts else None

    def committed(self, batch: Batch) -> None:
        """``batch`` is stored: what it holds is no longer dirty."""
        by_name = {build.name: build for build in self.builds}
        for part in batch.parts:
            build = by_name[part.name]
            build.stored = parse(part.checkpoint)
            self._stored_last = max(self._stored_last, build.stored)
            if part.activate:
                build.activate = False
                build.expect_active = build.namespace


def _failed(build: Build, record: Recorded) -> Collection[RowKey]:
    """A fold raised: log it with the traceback, change nothing, go on."""
    log.exception("projection.failed", projection=build.name, position=record.position)
    return ()
