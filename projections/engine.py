"""The engine: feeds log entries to several projection builds and collects what to store.

Pure: no IO. The runner reads the log, feeds the entries here, stores ``batch()`` in one
transaction and then calls ``committed(batch)``.

The log is split into partitions, each with its own global stream: an entry is fed with its
partition, and positions are compared only within one partition (each stream is a total order;
across partitions there is none). Each build tracks two positions per partition: ``applied``
(the last entry folded into its memory) and ``stored`` (its checkpoint in the store, written
in the same transaction as its rows).

Invariants:
- The duplicate guard: an entry at or before a build's ``applied`` position of its partition is
  skipped for that build (``is_new``). Redelivered entries, and the overlap between catch-up and
  the consumer group, are therefore folded once.
- Folds reach the same rows whatever the interleaving of the partitions (each partition's order
  kept): tested in ``tests/unit/projections/test_partitions.py``.
- After a restart the memory is rebuilt by folding the log from zero; entries at or before
  ``stored`` change memory only (their rows are stored already, and the rows stored are those
  of the state at ``stored``; a fold with ``settled`` is told which), later ones mark rows
  dirty. With several partitions an entry before the checkpoint may come after one past it (of
  another partition): from then on a build marks what such entries change dirty too (and
  still tells ``settled``), since a row made of several partitions' facts may have been
  reported changed only by the entry that came last. A build is stored only once it stands at
  or past its checkpoint on every partition: rows are rendered from the state at the new
  checkpoint, never from one that lacks what is stored. So the stored rows are always those of
  the state at the stored checkpoint.
- A fold that lets runs at rest leave its memory (``projections.base.Evicting``) is asked to
  only when its build has stored everything it folded (``evict_resting``): what it forgets is
  what its stored rows say, so the runner can give a run back from them.
- A fold that raises is logged and the event skipped for that fold: nothing stops the engine.
- An entry that cannot be decoded is logged and skipped by every build, the same way on every
  replay; the ones no build had stored past are kept in ``undecodable`` for the dead letters.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import structlog

from events import codec
from events.codec import Recorded
from events.errors import UndecodableEvent
from projections.base import (
    ZERO,
    Evicting,
    Position,
    Positions,
    Projection,
    Row,
    RowKey,
    format_checkpoint,
    parse_checkpoint,
    takes,
)
from projections.base import parse_position as parse

log = structlog.get_logger("projections.engine")
Apply = Callable[[Recorded], Collection[RowKey]]
#: A log entry's fields: a mapping, or the server's flat ``[field, value, ...]`` (cheaper).
Fields = Mapping[bytes, bytes] | list[bytes]
Settle = Callable[[Iterable[RowKey]], None]


#: Runs at rest a build looks at, at most, each time it lets them go (a few ms of work).
EVICT_AT_ONCE = 50


def is_new(position: Position, applied: Position) -> bool:
    """The duplicate guard: fold an entry only if it is after what is folded already."""
    return position > applied


@dataclass
class Build:
    """One build of a projection: its fold, its namespace and where it stands."""

    projection: Projection
    namespace: str
    #: Per partition (the engine pads them with zeros to its partitions).
    stored: list[Position] = field(default_factory=list)
    applied: list[Position] = field(default_factory=list)
    #: What the active pointer must hold when this build commits ("" for nothing): readers
    #: moved to another build means this one must stop writing.
    expect_active: str = ""
    #: Make this build the one readers read, at the next commit.
    activate: bool = False
    dirty: set[RowKey] = field(default_factory=set)
    #: Rows of runs that came back from the cold rows, as they were stored: written back ahead
    #: of the next batch's own rows (which may change them), in the same transaction.
    warm: list[Row] = field(default_factory=list)
    #: It folded an entry past its checkpoint: entries before it change rows to store too.
    beyond: bool = False

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
    def __init__(self, builds: Sequence[Build], partitions: int = 1) -> None:
        if len({build.name for build in builds}) != len(builds):
            raise ValueError("one build per projection")
        self.partitions = partitions
        self.builds = list(builds)
        for build in self.builds:
            build.stored = _padded(build.stored, partitions)
            build.applied = _padded(build.applied, partitions)
        #: Entries that could not be decoded and were not stored past yet, for dead letters:
        #: (partition, position, fields, error).
        self.undecodable: list[tuple[int, str, Mapping[bytes, bytes], str]] = []
        each = range(partitions)
        #: Per partition, the latest position any build folded, and the latest any stored.
        self._last = [max((b.applied[p] for b in self.builds), default=ZERO) for p in each]
        self._stored_last = [max((b.stored[p] for b in self.builds), default=ZERO) for p in each]
        #: Per partition, every build has folded up to ``_last`` (their ``applied`` is written
        #: only when read: see ``_level_up``), the usual case once the builds caught up.
        self._level = [all(b.applied[p] == self._last[p] for b in self.builds) for p in each]
        self._folds: list[Fold] = [
            (build, build.projection.apply, getattr(build.projection, "settled", None))
            for build in self.builds
        ]
        #: Per event type, the folds it goes to (a projection's ``handles``, if it has one).
        self._routes: dict[type, list[Fold]] = {}
        #: Per ``k`` field, whether some build takes that kind (if not, it is not decoded).
        self._kinds: dict[bytes, bool] = {}

    @property
    def applied(self) -> Positions:
        """Every build has folded each partition up to here."""
        self._level_up()
        return tuple(
            min((build.applied[p] for build in self.builds), default=ZERO)
            for p in range(self.partitions)
        )

    @property
    def stored(self) -> Mapping[str, Positions]:
        return {build.name: tuple(build.stored) for build in self.builds}

    def feed_entry(self, position: str, fields: Fields, partition: int = 0) -> None:
        """Fold one raw entry of ``partition``'s stream, decoding it only if some build has not
        folded it yet."""
        pos = parse(position)
        if not is_new(pos, self._last[partition]):
            if self._level[partition] or not any(
                is_new(pos, b.applied[partition]) for b in self.builds
            ):
                return
        elif (
            type(fields) is list
            and len(fields) == 6
            and fields[0] == codec.KIND
            and not self._wanted(fields[1])
        ):
            # No build takes this kind: nothing to decode.
            self._last[partition], self._level[partition] = pos, True
            return
        try:
            if type(fields) is list:
                record = codec.recorded_from(position, fields)
            else:
                record = codec.recorded(position, cast(Mapping[bytes, bytes], fields))
        except UndecodableEvent as exc:
            log.error("projection.undecodable", position=position, error=exc.why)  # noqa: TRY400
            if any(pos > build.stored[partition] for build in self.builds):  # new to some build
                mapping = codec.fields_of(fields) if isinstance(fields, list) else fields
                self.undecodable.append((partition, position, mapping, exc.why))
            self._level_up()
            for build in self.builds:
                build.applied[partition] = max(build.applied[partition], pos)
            self._last[partition] = max(self._last[partition], pos)
            self._level[partition] = all(
                build.applied[partition] == self._last[partition] for build in self.builds
            )
            return
        self._feed(pos, record, partition)

    def feed(self, record: Recorded, partition: int = 0) -> None:
        self._feed(parse(record.position), record, partition)

    def _feed(self, pos: Position, record: Recorded, partition: int) -> None:
        if is_new(pos, self._last[partition]):  # after everything any build folded: usual
            kind = type(record.event)
            route = self._routes.get(kind)
            if route is None:
                route = self._routes[kind] = [
                    f for f in self._folds if takes(f[0].projection, kind)
                ]
            self._last[partition], self._level[partition] = pos, True  # every build is here
            if pos > self._stored_last[partition]:  # new to every build: changes are to store
                for build, apply, _ in route:
                    try:
                        changed = apply(record)
                    except Exception:  # noqa: BLE001 - a fold must never stop the projector
                        changed = _failed(build, record)
                    build.beyond = True
                    if changed:
                        build.dirty.update(changed)
                return
            self._fold(route, pos, record, partition)  # a restart, folding up to checkpoints
            return
        self._level_up()  # behind some build (they started from different checkpoints)
        kind = type(record.event)
        behind = []
        for fold in self._folds:
            build = fold[0]
            if is_new(pos, build.applied[partition]):
                build.applied[partition] = pos
                if takes(build.projection, kind):
                    behind.append(fold)
        self._fold(behind, pos, record, partition)

    def _fold(self, folds: list[Fold], pos: Position, record: Recorded, partition: int) -> None:
        """Fold ``record`` into ``folds``: what changes after a build's checkpoint is to be
        stored, what changes before it is stored already (``settled``) and, once the build
        folded an entry past its checkpoint, to be stored again (see the invariants)."""
        for build, apply, settle in folds:
            try:
                changed = apply(record)
            except Exception:  # noqa: BLE001 - a fold must never stop the projector
                changed = _failed(build, record)
            if pos > build.stored[partition]:
                build.beyond = True
                build.dirty.update(changed)
                continue
            if not changed:
                continue
            if settle is not None:
                settle(changed)
            if build.beyond:
                build.dirty.update(changed)

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
        for partition, level in enumerate(self._level):
            if level:
                last = self._last[partition]
                for build in self.builds:
                    build.applied[partition] = last

    def batch(self) -> Batch | None:
        """What to store now (None: nothing): every build's changed rows and checkpoint.

        The rows are rendered now, so folding may go on while the batch is being stored; the
        next batch is taken only after ``committed``. A batch that could not be stored leaves
        the engine behind the store: its owner starts a new engine from the store.
        """
        self._level_up()
        parts = []
        for build in self.builds:
            positions = tuple(build.applied)
            if any(map(operator.lt, positions, build.stored)):
                # Behind its checkpoint on some partition (a restart folding up to it): its
                # rows would be rendered from less than is stored. Only once it stands at or
                # past its checkpoint on every partition (the same with one partition).
                continue
            if positions == tuple(build.stored) and not build.activate and not build.warm:
                continue
            rows = (*build.warm, *build.projection.rows(build.dirty))
            build.dirty, build.warm = set(), []
            parts.append(
                Part(
                    name=build.name,
                    namespace=build.namespace,
                    expected_checkpoint=format_checkpoint(build.stored),
                    checkpoint=format_checkpoint(positions),
                    expect_active=build.expect_active,
                    activate=build.activate,
                    rows=rows,
                )
            )
        return Batch(tuple(parts)) if parts else None

    def evict_resting(self, rest_ms: int, at_most: int = EVICT_AT_ONCE) -> int:
        """Let the runs at rest for ``rest_ms`` of log time (up to the newest entry folded)
        leave the memory of every build that has stored all it folded (nothing dirty, its
        checkpoint where it folded to), ``at_most`` looked at per build (the rest at the next
        call: after a catch-up, every run of the log is at rest, and letting them all go at
        once would hold up the next batch); how many left."""
        before = max(position[0] for position in self._last) - rest_ms
        evicted = 0
        for build in self.stored_all():
            fold = build.projection
            if isinstance(fold, Evicting):
                evicted += fold.evict_resting(before, at_most)
        return evicted

    def let_resting_go(self) -> int:
        """Let every run at rest leave the memory of every build that has stored all it
        folded, however recently it came to rest; how many left."""
        evicted = 0
        for build in self.stored_all():
            fold = build.projection
            if isinstance(fold, Evicting):
                evicted += fold.evict_resting(sys.maxsize, sys.maxsize)
        return evicted

    def stored_all(self) -> list[Build]:
        """The builds that have stored all they folded: nothing dirty or to write back, the
        checkpoint where they folded to. Their folds' memory is what their stored rows were
        rendered from."""
        self._level_up()
        return [b for b in self.builds if not b.dirty and not b.warm and b.applied == b.stored]

    def committed(self, batch: Batch) -> None:
        """``batch`` is stored: what it holds is no longer dirty."""
        by_name = {build.name: build for build in self.builds}
        for part in batch.parts:
            build = by_name[part.name]
            build.stored = _padded(parse_checkpoint(part.checkpoint), self.partitions)
            self._stored_last = list(map(max, self._stored_last, build.stored))
            if part.activate:
                build.activate = False
                build.expect_active = build.namespace


def _padded(positions: Sequence[Position], partitions: int) -> list[Position]:
    if len(positions) > partitions:
        raise ValueError(f"{len(positions)} positions for {partitions} partitions")
    return [*positions, *[ZERO] * (partitions - len(positions))]


def _failed(build: Build, record: Recorded) -> Collection[RowKey]:
    """A fold raised: log it with the traceback, change nothing, go on."""
    log.exception("projection.failed", projection=build.name, position=record.position)
    return ()
