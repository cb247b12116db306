"""The global log's archive: Parquet segments in a directory, listed in a manifest, and the
reader that shows archive + live log as one log.

Layout of an archive directory (``RUNPLANE_EVENT_ARCHIVE``)::

    manifest.json                             the segments, in log order (rewritten atomically)
    day=2026-12-05/<first>_<last>.parquet     one segment: entries of one day (UTC, log time)
                                              from ``<first>`` to ``<last>``
    partition=1/manifest.json ...             each other partition's archive, laid out the same

Each partition of the log is archived on its own (``partition_root``): its own manifest,
segments, lock and pointer; partition 0's is the directory itself, as with one partition.

The Parquet side is ``services.core.segments``, imported only when a segment is written or
read: every service reads the log through this module, and pyarrow would cost each tens of MiB.

Invariants:
- A segment is written to a temporary file in its directory, fsynced, renamed into place and
  its directory fsynced; only then is it listed in the manifest (also written that way). A file
  the manifest does not list is a leftover of a crash: readers never open it, the archiver
  deletes it (``Archive.forget_unlisted``).
- Listed segments follow each other: each one's first position is after the previous one's last.
- A day's segments are merged as they come (``Archive.merge``): two neighbours, the newest
  first, that hold as many of the segments as first written (their *places*), up to
  ``MERGED_EVENTS``: a binary counter, so a day of 5-minute passes lists two segments (288 is
  256 + 32), not 288, and each event is rewritten about eight times. A place
  keeps its number (its order among the segments as first written) for good: the index of
  retired histories names places (``services.core.retired``), and a merged segment lists its
  places in its footer, each a range of its rows (``services.core.segments.merge``). The
  merged two are deleted by the next pass, so a reader that read the manifest just before
  finds them still; one that finds a file gone reads the manifest again.
- The server holds a pointer (``keys.log_archive``: the directory and the last position the
  global stream was trimmed to, at most), set before each trim. A reader reads the pointer after
  the stream in one round trip, so whatever the stream lacks is in the archive, and it takes
  entries up to the pointer's position from the archive and the rest from the stream: no entry
  is missed or seen twice while the archiver trims.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import fcntl
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import msgspec
import redis.asyncio as aioredis
from pydantic import Field, field_validator

from events import codec, keys
from events.errors import UndecodableEvent
from events.spans import duration_s
from services.core import durable
from services.core.client import raw_ranges
from services.core.durable import atomically, delete_unlisted
from services.core.retired import Retired, RetiredIndex
from services.core.settings import Settings

if TYPE_CHECKING:  # pyarrow only where a segment is opened
    from services.core.segments import Layout

#: A log position as numbers: (milliseconds, sequence).
Position = tuple[int, int]
#: An entry of the global log as the server sends it: position and ``[field, value, ...]``.
Entry = tuple[str, list[bytes]]
MAX_SEQ = 2**64 - 1
ZERO: Position = (0, 0)
MANIFEST = "manifest.json"
LOCK = ".lock"


def parse(position: str) -> Position:
    ms, _, seq = position.partition("-")
    return int(ms), int(seq or 0)


def show(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def before(position: Position) -> Position:
    """The greatest position that comes before ``position``."""
    ms, seq = position
    return (ms, seq - 1) if seq > 0 else (ms - 1, MAX_SEQ)


def after(position: Position) -> Position:
    """The least position that comes after ``position``."""
    ms, seq = position
    return (ms, seq + 1) if seq < MAX_SEQ else (ms + 1, 0)


def day_of(position: Position) -> str:
    return dt.datetime.fromtimestamp(position[0] / 1000, dt.UTC).date().isoformat()


class ArchiveSettings(Settings):
    event_archive: Path | None = Field(
        default=None,
        description="The directory the global log is archived to (Parquet segments and their "
        "manifest) by `mcli admin archive`; the local stack's default is event-archive/ in its "
        "state directory. Readers find it through the server (the path archived to).",
    )
    retain: str | None = Field(
        default=None,
        description="Keep this long of the log in Valkey (`7d`, `12h`): the active "
        "log-collector archives what is older, as `mcli admin archive --before` does, every "
        "`RUNPLANE_RETAIN_EVERY_S`, to RUNPLANE_EVENT_ARCHIVE. Unset: the log stays whole.",
    )
    retain_every_s: float = Field(
        default=300.0, gt=0, description="Between two archive passes under RUNPLANE_RETAIN."
    )

    @field_validator("retain", mode="before")
    @classmethod
    def _a_span(cls, value: str | None) -> str | None:
        if not value:  # unset, or empty (compose's ${RUNPLANE_RETAIN:-})
            return None
        duration_s(value)  # one line that says what it takes
        return value

    @property
    def retain_s(self) -> float | None:
        """RUNPLANE_RETAIN in seconds; None where the log stays whole."""
        return duration_s(self.retain) if self.retain is not None else None


class Segment(msgspec.Struct, frozen=True, omit_defaults=True):
    path: str  # relative to the archive's directory
    first: str
    last: str
    events: int
    places: int = 1  # the segments as first written it holds (``Archive.merge``)


class Manifest(msgspec.Struct):
    segments: list[Segment] = msgspec.field(default_factory=list)

    @property
    def last(self) -> Position:
        return parse(self.segments[-1].last) if self.segments else ZERO


#: The most events a merged segment holds (a pass's segment holds up to 100,000): a history's
#: lookup reads only the row groups of its places' rows, and a replay a row group at a time.
MERGED_EVENTS = 1_000_000
#: The events and the merges a pass makes at most: the newest segments' merges need about twice
#: ``MERGED_EVENTS`` and a merge per power of two of a day's passes; an archive of a former
#: version, never merged, is merged over many passes, its newest segments first (each merge
#: rewrites the manifest: a year of small segments would otherwise hold one pass for hours).
MERGE_BUDGET = 4 * MERGED_EVENTS
MERGES_A_PASS = 256


class _Listing(NamedTuple):
    """A manifest as read, with what its lookups halve: each listed segment's last position
    and the number of its first place."""

    manifest: Manifest
    lasts: list[Position]
    starts: list[int]

    @classmethod
    def of(cls, manifest: Manifest) -> _Listing:
        starts = list(itertools.accumulate((s.places for s in manifest.segments), initial=0))
        return cls(manifest, [parse(s.last) for s in manifest.segments], starts[:-1])


class Pointer(msgspec.Struct, frozen=True):
    """What the server knows of the archive: where it is and how far the stream was trimmed;
    ``retired``: how far the archiver has looked for runs at rest whose streams may go (the
    entries after it are looked at again by the next pass)."""

    dir: str
    last: str
    retired: str = "0-0"


class Archive:
    """One archive directory: its manifest, its segments, reading and writing them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index = RetiredIndex(root)  # where each retired history is
        self._cached: tuple[tuple[str, int], list[Position], list[Entry]] | None = None
        self._manifest = durable.Manifest(root / MANIFEST, Manifest)
        self._listing = _Listing.of(Manifest())
        self._layouts: dict[str, Layout] = {}  # by path

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Held by the one archiver writing here (on this host); another gets ``ArchiveBusy``
        at once: two would write the same segments and list them twice."""
        return locked(self.root)

    def manifest(self) -> Manifest:
        """The listed segments; decoded again only once the manifest was replaced (a replay
        reads it for every page)."""
        return self._manifest.read() or Manifest()

    def dataset(self) -> Any:
        """The listed segments as one ``pyarrow.dataset.Dataset`` with a ``day`` column (for
        reports over the archive, with pyarrow or DuckDB): never a file the manifest does not
        list."""
        from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

        return segments.dataset(self.root, [s.path for s in self.manifest().segments])

    def write(self, entries: Sequence[Entry]) -> Segment:
        """Write ``entries`` (in order, one day's) as a segment, atomically; not listed yet."""
        first, last = entries[0][0], entries[-1][0]
        relative = f"day={day_of(parse(first))}/{first}_{last}.parquet"
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

        table = segments.table(entries, [aggregate_of(*entry) for entry in entries])
        atomically(path, lambda tmp: segments.write(table, tmp))
        return Segment(relative, first, last, len(entries))

    def add(self, segment: Segment) -> Manifest:
        """Add ``segment`` to the manifest (atomically); a no-op if it is listed already."""
        manifest = Manifest(list(self.manifest().segments))  # the cached one stays as read
        if segment in manifest.segments:
            return manifest
        if manifest.segments and parse(segment.first) <= manifest.last:
            raise ValueError(f"segment {segment.path} overlaps the archive (up to {manifest.last})")
        manifest.segments.append(segment)
        self._list(manifest)
        return manifest

    def merge(
        self,
        budget: int = MERGE_BUDGET,
        step: Callable[[str], None] | None = None,
        most: int = MERGES_A_PASS,
    ) -> int:
        """Merge listed segments (see above) until none may be, or ``budget`` events were
        merged, or ``most`` merges made; how many merges. Each merged segment is written,
        durable, before the manifest lists it in place of the two; ``step`` is told of each
        (``MERGE_WRITTEN``, ``MERGED``)."""
        from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

        merges = 0
        while budget > 0 and merges < most:
            listed = self.manifest().segments
            n = _mergeable(listed)
            if n is None:
                break
            older, newer = listed[n], listed[n + 1]
            day = older.path.partition("/")[0]
            merged = Segment(
                f"{day}/{older.first}_{newer.last}.parquet",
                older.first,
                newer.last,
                older.events + newer.events,
                older.places + newer.places,
            )
            parts = [(self.root / s.path, self._places(s)) for s in (older, newer)]
            atomically(self.root / merged.path, partial(segments.merge, parts))
            if step is not None:
                step(MERGE_WRITTEN)
            self._list(Manifest([*listed[:n], merged, *listed[n + 2 :]]))
            if step is not None:
                step(MERGED)
            budget -= merged.events
            merges += 1
        return merges

    def places_of(self, positions: Iterable[Position]) -> set[int]:
        """The places (segments as first written: see above) that hold ``positions``, listed
        segments' (the manifest read once, each merged segment's places parsed once)."""
        listing = self._listed()
        found: set[int] = set()
        within: dict[int, list[Position]] = {}  # a merged segment's places' last positions
        for position in positions:
            n = bisect.bisect_left(listing.lasts, position)
            segment = listing.manifest.segments[n]
            if segment.places == 1:
                found.add(listing.starts[n])
                continue
            if n not in within:
                within[n] = [parse(last) for last, _ in self._places(segment)]
            found.add(listing.starts[n] + bisect.bisect_left(within[n], position))
        return found

    def _list(self, manifest: Manifest) -> None:
        encoded = msgspec.json.encode(manifest)
        atomically(self.root / MANIFEST, lambda tmp: Path(tmp).write_bytes(encoded))

    def forget_unlisted(self) -> list[Path]:
        """Delete segment files the manifest does not list (a crash's leftovers)."""
        listed = {self.root / s.path for s in self.manifest().segments}
        # Temporary files lie beside what they become (never in another partition's archive).
        leftovers = [*self.root.glob("day=*/.*.tmp"), *self.root.glob(".*.tmp")]
        return delete_unlisted([*self.root.glob("day=*/*.parquet"), *leftovers], listed)

    def read(self, start: Position, upto: Position, count: int) -> list[Entry]:
        """Up to ``count`` archived entries after ``start`` (exclusive), up to ``upto``."""
        return _again_if_merged(lambda: self._read(start, upto, count))

    def history(self, places: Iterable[int], aggregate: str) -> list[Entry]:
        """``aggregate``'s entries in the places ``places`` (see above), in order."""
        return _again_if_merged(lambda: self._history(places, aggregate))

    def _read(self, start: Position, upto: Position, count: int) -> list[Entry]:
        found: list[Entry] = []
        listing = self._listed()
        # The first segment that ends after ``start`` (found by halving: a replay reads the
        # archive a page at a time), then its row groups (a merged one has many) that may.
        first = bisect.bisect_right(listing.lasts, start)
        for segment in listing.manifest.segments[first:]:
            if parse(segment.first) > upto or len(found) >= count:
                break
            for group, (low_ms, high_ms) in enumerate(self._layout(segment).groups):
                if high_ms < start[0]:
                    continue
                if low_ms > upto[0] or len(found) >= count:
                    break
                positions, entries = self._entries(segment, group)
                low = bisect.bisect_right(positions, start)
                high = bisect.bisect_right(positions, upto, lo=low)
                found += entries[low : min(high, low + count - len(found))]
        return found

    def _history(self, places: Iterable[int], aggregate: str) -> list[Entry]:
        from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

        listing = self._listed()
        wanted: dict[int, list[int]] = {}  # listed segment -> its places wanted (from 0)
        for place in sorted(places):
            n = bisect.bisect_right(listing.starts, place) - 1
            wanted.setdefault(n, []).append(place - listing.starts[n])
        found: list[Entry] = []
        for n, held in sorted(wanted.items()):
            segment = listing.manifest.segments[n]
            path = self.root / segment.path
            if segment.places == 1:
                found += segments.read_aggregate(path, aggregate)
                continue
            starts = list(itertools.accumulate((n for _, n in self._places(segment)), initial=0))
            rows = [(starts[p], starts[p + 1]) for p in held]
            found += segments.read_aggregate(path, aggregate, rows)
        return found

    def _listed(self) -> _Listing:
        manifest = self.manifest()
        if self._listing.manifest is not manifest:
            self._listing = _Listing.of(manifest)
        return self._listing

    def _layout(self, segment: Segment) -> Layout:
        """``segment``'s layout (its footer's), kept for the segments last read."""
        found = self._layouts.get(segment.path)
        if found is None:
            from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

            if len(self._layouts) >= _LAYOUTS:
                self._layouts.clear()
            found = self._layouts[segment.path] = segments.layout(self.root / segment.path)
        return found

    def _places(self, segment: Segment) -> list[tuple[str, int]]:
        """Each place ``segment`` holds: its last position and its rows."""
        return self._layout(segment).places or [(segment.last, segment.events)]

    def _entries(self, segment: Segment, group: int) -> tuple[list[Position], list[Entry]]:
        # A rebuild reads a row group page by page: keep the last one read.
        if self._cached is not None and self._cached[0] == (segment.path, group):
            return self._cached[1], self._cached[2]
        from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

        positions, entries = segments.read_groups(self.root / segment.path, [group])
        self._cached = ((segment.path, group), positions, entries)
        return positions, entries


#: Segments' layouts an archive keeps (a replay reads one segment after another).
_LAYOUTS = 256
#: The steps of a merge (``Archive.merge``), for a test that kills the archiver there.
MERGE_WRITTEN, MERGED = "merge_written", "merged"
_R = TypeVar("_R")


def _mergeable(listed: Sequence[Segment]) -> int | None:
    """The older of the newest two neighbours that may be merged: of one day, holding as many
    places each, together up to ``MERGED_EVENTS``."""
    for n in range(len(listed) - 2, -1, -1):
        older, newer = listed[n], listed[n + 1]
        if (
            older.path.partition("/")[0] == newer.path.partition("/")[0]
            and older.places == newer.places
            and older.events + newer.events <= MERGED_EVENTS
        ):
            return n
    return None


def _again_if_merged(read: Callable[[], _R]) -> _R:
    """``read()``, once more if a segment it was reading had gone: merged since its manifest
    was read, and deleted by a later pass (``read`` reads the manifest again)."""
    try:
        return read()
    except FileNotFoundError:
        return read()


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """The lock of the one writer of the directory ``root`` (on this host): another gets
    ``ArchiveBusy`` at once."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveBusy(root) from None
        yield
    finally:
        os.close(fd)  # and the lock with it


def partition_root(root: Path, partition: int) -> Path:
    """The archive of one partition of the log in the archive directory ``root``."""
    return root if partition == 0 else root / f"partition={partition}"


def log_dataset(root: Path, partitions: int) -> Any:
    """The whole archived log, every partition's listed segments (``Archive.dataset``), as one
    ``pyarrow.dataset.Dataset``: what reports over the archive read (an aggregate's events are
    in its partition's, in order)."""
    from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

    return segments.union([Archive(partition_root(root, p)).dataset() for p in range(partitions)])


def aggregate_of(position: str, flat: list[bytes]) -> str:
    """The aggregate of an entry ("" for one that is not an event: it is archived all the
    same, as consumers dead-letter it and go on)."""
    try:
        return codec.recorded_from(position, flat).event.aggregate
    except UndecodableEvent:
        return ""


# --- the server's pointer --------------------------------------------------------------------


async def pointer(client: aioredis.Redis, partition: int = 0) -> Pointer | None:
    value = await client.get(keys.log_archive(partition))
    return _pointer(value)


def _pointer(value: object) -> Pointer | None:
    if value is None:
        return None
    return msgspec.json.decode(cast(bytes, value), type=Pointer)


async def set_pointer(client: aioredis.Redis, partition: int, value: Pointer) -> None:
    await client.set(keys.log_archive(partition), msgspec.json.encode(value))


class ArchivedLog:
    """One partition's global log, archive and stream as one: a ``projections.reader.LogReader``.

    ``root`` names the partition's archive directory (``partition_root``) as this host sees it;
    None takes the pointer's.
    """

    def __init__(
        self, client: aioredis.Redis, partition: int = 0, root: Path | None = None
    ) -> None:
        self.redis = raw_ranges(client)
        self.stream = keys.log_stream(partition)
        self.key = keys.log_archive(partition)
        self.root = root
        self._archive: Archive | None = None
        self._known: Pointer | None = None  # the latest pointer seen

    async def read(self, after: str, count: int) -> list[Entry]:
        """Up to ``count`` entries after ``after`` (exclusive), in order."""
        start = ZERO if after in ("0", "") else parse(after)
        found = self._known
        if found is None or start >= parse(found.last):
            live, found = await self._live(start, count)
            if found is None or start >= parse(found.last):
                return live
        # The pointer only moves on: what comes before it is in the archive, the stream not
        # asked (a replay from zero reads the archive without a page of the stream each time).
        last = parse(found.last)
        old = self._open(found).read(start, last, count)
        while len(old) < count:
            live, again = await self._live(last, count - len(old))
            if again is None or parse(again.last) <= last:
                return old + live
            # The archiver moved on meanwhile: its new part first, then the stream again.
            old += self._open(again).read(last, parse(again.last), count - len(old))
            last = parse(again.last)
        return old

    async def history(self, aggregate: str, retired: Retired) -> list[Entry]:
        """The archived part of ``aggregate``'s history, whose stream went (``retired``)."""
        found = _pointer(await self.redis.get(self.key))
        if found is None:  # set before any stream is trimmed or deleted
            raise RuntimeError(f"{aggregate} was archived, and {self.key} names no archive")
        return self._open(found).history(retired.segments, aggregate)

    async def retired(self, aggregate: str) -> Retired | None:
        """``aggregate``'s record in the archive's index of retired histories
        (``services.core.retired``); None where it has none, or nothing was archived."""
        found = _pointer(await self.redis.get(self.key))
        if found is None:
            return None
        return self._open(found).index.find(aggregate)

    async def _live(self, start: Position, count: int) -> tuple[list[Entry], Pointer | None]:
        begin = "-" if start == ZERO else f"({show(start)}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute_command("XRANGE", self.stream, begin, "+", "COUNT", count)
        pipe.get(self.key)
        raw, value = await pipe.execute()
        found = self._known = _pointer(value)
        last = parse(found.last) if found is not None else ZERO
        live = [
            (p.decode(), flat)
            for p, flat in cast(list[list[Any]], raw)
            if found is None or parse(p.decode()) > last
        ]
        return live, found

    def _open(self, found: Pointer) -> Archive:
        root = self.root if self.root is not None else Path(found.dir)
        if self._archive is None or self._archive.root != root:
            if not (root / MANIFEST).exists():
                raise ArchiveMissing(root, found)
            self._archive = Archive(root)
        return self._archive


class ArchiveBusy(Exception):
    """Another archiver is writing to this archive."""

    def __init__(self, root: Path) -> None:
        super().__init__(f"another archiver is writing to {root}: try again once it is done")
        self.root = root


class ArchiveMissing(Exception):
    """The stream was trimmed after archiving, and this host cannot read the archive: reading
    on would skip entries, so nothing is read."""

    def __init__(self, root: Path, found: Pointer) -> None:
        super().__init__(
            f"the global log up to {found.last} is archived in {found.dir}, and {root / MANIFEST} "
            "cannot be read here: mount the archive at that path"
        )
        self.root = root


class NoArchive(Exception):
    """The archive's directory is not there (a report over the archive cannot be made)."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            f"no archive in {root}: no such directory; give the archive's directory with "
            "--dir (or RUNPLANE_EVENT_ARCHIVE)"
        )
        self.root = root


def raw_entries(entries: Iterable[Entry]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """``entries`` in the shape redis-py's XRANGE gives (``EventStore.read_log_entries``)."""
    return [(position.encode(), codec.fields_of(flat)) for position, flat in entries]
