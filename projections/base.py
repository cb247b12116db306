"""What every fold shares: the Projection protocol, rows, log positions.

A fold keeps its state in memory. ``apply(record)`` folds one recorded event and returns the
keys of the rows it changed; ``rows(keys)`` renders those rows from the current state. A row is
stored in a hash per kind (``events.keys.projection_rows``) and may belong to sorted-set
listing indexes (``events.keys.projection_index``), always with its id as the member.

Invariants:
- A fold never raises on an event it cannot apply: it logs it and skips it (``skipped``), so a
  bad event can never stop the projector. Whatever it skips, it skips the same way on a rebuild.
- A row's body depends only on the events folded, never on when ``rows`` is called. Its index
  changes may depend on what was stored before: a fold may write a membership that never
  changes only the first time it renders the row. Such a fold also has ``settled(keys)``,
  which the engine calls for rows an event changed that are stored already (a restart folding
  the log up to its checkpoint), so that it knows them as stored.
- A fold may say which event types it takes (``handles``, a set of exact types): the engine
  gives it no other, so ``apply`` must change nothing for the others.
- Row bodies are JSON (msgspec), integers for times (ms since the epoch) and GPU-milliseconds.
- A fold may let runs at rest leave its memory (``Evicting``): the engine asks it to only
  right after their rows were stored, so what it forgets is what its stored rows say, and the
  runner gives a run back (``restore``, from those rows) before it folds a new event of it.
  Rows rendered after a restore are the rows the fold would have rendered had it never
  forgotten the run (tested on random histories).
- A fold may write its memory down (``Resumable``): the runner does so when the projector
  stops cleanly, at a checkpoint with nothing left to store, and a projector that starts on
  that same checkpoint takes the memory up again instead of folding the log from zero. The
  memory is the fold's own attributes, as its ``Memory`` struct names them, typed (MessagePack,
  decoded into those types only: nothing in it is code).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

import msgspec
import structlog

from events.codec import Recorded
from events.usage import DAY_MS

log = structlog.get_logger("projections")

#: (kind, id): which hash the row lives in, and its field there.
RowKey = tuple[str, str]

#: A log position (``"<ms>-<seq>"``) as a comparable pair: on one partition's global stream.
Position = tuple[int, int]
ZERO: Position = (0, 0)
#: A position on every partition (index: the partition), as a checkpoint: what a build folded.
Positions = tuple[Position, ...]

_encoder = msgspec.json.Encoder()


class Row(msgspec.Struct, frozen=True, gc=False):
    """One row to store: its body (None: the row is gone) and the indexes it is (not) in."""

    kind: str
    id: str
    body: bytes | None
    #: (index, score): sorted sets the row is in, scored (usually by a time in ms).
    index: tuple[tuple[str, int], ...] = ()
    #: Sorted sets the row must not be in (no error if it is not).
    unindex: tuple[str, ...] = ()


class Projection(Protocol):
    """A pure fold of the log into rows. ``name`` and ``version`` name its key namespace."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    def apply(self, record: Recorded) -> Collection[RowKey]:
        """Fold one event; the keys of the rows it changed (empty if it is not concerned)."""
        ...

    def rows(self, keys: Iterable[RowKey]) -> Iterable[Row]:
        """The current rows of ``keys``."""
        ...


@runtime_checkable
class Evicting(Protocol):
    """A fold that lets runs at rest leave its memory and takes them back from their rows."""

    def evict_resting(self, before: int, at_most: int) -> int:
        """Forget the runs that came to rest at ``before`` or earlier (log time, ms), still at
        rest (their rows stored as they are now), the longest at rest first, ``at_most`` looked
        at; how many. The others wait for a later call."""
        ...

    def let_go(self, run_id: str) -> bool:
        """Forget the run now if it is at rest (its stored rows as they are now); whether it
        did. The runner's catch-up asks it of a run whose last entry it just folded."""
        ...

    def holds(self, run_id: str) -> bool:
        """Whether the run is in memory (False for one it never saw, too)."""
        ...

    def restoring(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> list[RowKey]:
        """The stored rows still to read to take the run back, given those read so far
        (``found``: None for a row that is not stored); empty once they are all read."""
        ...

    def restore(self, run_id: str, found: Mapping[RowKey, bytes | None]) -> None:
        """Take the run back from its rows (none found: a run this fold never saw)."""
        ...

    def as_stored(
        self, run_id: str, found: Mapping[RowKey, bytes | None]
    ) -> tuple[list[RowKey], list[Row]]:
        """The run's rows as the store holds them (the fold let it go): first the keys still to
        read, given those read so far (``found``, None for a row that is not stored); then, with
        nothing left to read, every row of the run, its body as stored and every index it is in
        with its score. Nothing shared with other runs; none for a run this fold never saw.
        Called after ``restoring`` (its reads in ``found``): storing these rows back, as they
        are, leaves the store as it was before they were taken out."""
        ...


@runtime_checkable
class Resumable(Protocol):
    """A fold whose memory can be written down and taken up again: the attributes that the
    fields of its ``Memory`` struct name, as those types (``memory_of``, ``recall_into``), in
    MessagePack; in JSON where ``memory_in_json`` says so (a fold that keeps JSON as it was
    written, ``msgspec.Raw``, which only the JSON encoder writes verbatim)."""

    Memory: ClassVar[type[msgspec.Struct]]


def _codec(fold: Resumable) -> Any:
    return msgspec.json if getattr(fold, "memory_in_json", False) else msgspec.msgpack


def memory_of(fold: Resumable) -> bytes:
    """A fold's memory: its attributes named by the fields of its ``Memory``, encoded."""
    kind = fold.Memory
    state = kind(**{name: getattr(fold, name) for name in kind.__struct_fields__})
    return cast(bytes, _codec(fold).encode(state))


def recall_into(fold: Resumable, memory: bytes) -> None:
    """Set a fold's attributes from ``memory`` (``memory_of``); nothing if it does not decode
    as its ``Memory`` (``msgspec.DecodeError``, ``msgspec.ValidationError``)."""
    kind = fold.Memory
    state: Any = _codec(fold).decode(memory, type=kind)
    for name in kind.__struct_fields__:
        setattr(fold, name, getattr(state, name))


def memory_form(fold: Resumable) -> str:
    """The shape of a fold's memory, a digest of its ``Memory``'s schema: a memory kept by a
    fold of another shape is not taken up."""
    return hashlib.sha256(msgspec.json.encode(msgspec.json.schema(fold.Memory))).hexdigest()[:16]


def due(resting: dict[str, int], before: int, at_most: int) -> list[str]:
    """Of ``resting`` (run -> the log time it came to rest, the earliest first), the runs that
    came to rest at ``before`` or earlier, ``at_most`` of them (left in it)."""
    taken: list[str] = []
    for run_id, at in resting.items():
        if at > before or len(taken) >= at_most:
            break
        taken.append(run_id)
    return taken


class LetsRunsGo:
    """What every ``Evicting`` fold shares: which runs at rest are due to go, and letting one
    go. A fold says whether a run is at rest (``at_rest``) and forgets it (``forget``); it
    keeps ``_resting`` (run -> the log time it came to rest, the earliest first)."""

    _resting: dict[str, int]

    def at_rest(self, run_id: str) -> bool:
        """Whether the fold holds the run, at rest: its stored rows say all it holds of it."""
        raise NotImplementedError

    def forget(self, run_id: str) -> None:
        """Let the run (at rest) leave memory."""
        raise NotImplementedError

    def evict_resting(self, before: int, at_most: int) -> int:
        """Forget the runs that came to rest at ``before`` or earlier and still are, the longest
        at rest first, ``at_most`` looked at (those no longer at rest drop out of the queue:
        they come back to it when they rest again); how many."""
        evicted = 0
        for run_id in due(self._resting, before, at_most):
            if self.at_rest(run_id):
                self.forget(run_id)
                evicted += 1
            del self._resting[run_id]
        return evicted

    def let_go(self, run_id: str) -> bool:
        """Forget the run now if it is at rest, however long it has been; whether it did."""
        if not self.at_rest(run_id):
            return False
        self.forget(run_id)
        self._resting.pop(run_id, None)
        return True


def takes(projection: object, kind: type) -> bool:
    """Whether ``projection`` takes events of type ``kind`` (its ``handles``; all if it has
    none): the engine gives it no others."""
    handles: Collection[type] | None = getattr(projection, "handles", None)
    return handles is None or kind in handles


def encode(value: object) -> bytes:
    return _encoder.encode(value)


def parse_position(position: str) -> Position:
    ms, _, seq = position.partition("-")
    return int(ms), int(seq or 0)


def format_position(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def format_checkpoint(positions: Sequence[Position]) -> str:
    """A checkpoint as stored: each partition's position, comma-separated, without the zeros
    at the end (``12-0,0-0,0-0`` is ``12-0``): with one partition it is that partition's
    position, and a build that folded nothing is ``0-0`` whatever the partitions."""
    last = len(positions)
    while last > 1 and positions[last - 1] == ZERO:
        last -= 1
    return ",".join(format_position(p) for p in positions[:last]) if last else "0-0"


def parse_checkpoint(text: str) -> Positions:
    """A stored checkpoint (``format_checkpoint``): the partitions it names (the others, at
    the end, stand at zero)."""
    return tuple(parse_position(part) for part in text.split(","))


def skipped(projection: str, record: Recorded, why: str) -> tuple[()]:
    """Log an event a fold cannot apply and change nothing (the rules would have refused it)."""
    event = record.event
    log.warning(
        "projection.skipped",
        projection=projection,
        position=record.position,
        type=type(event).__name__,
        run=getattr(event, "run_id", None),
        attempt=getattr(event, "attempt", None),
        node=getattr(event, "node", None),
        why=why,
    )
    return ()


def day_of(ms: int) -> str:
    """The UTC date of a time in ms, as ``YYYY-MM-DD`` (pure arithmetic: no time zone data)."""
    days = ms // DAY_MS
    # civil_from_days (Howard Hinnant): proleptic Gregorian, exact for every integer day.
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return f"{year:04d}-{month:02d}-{day:02d}"
