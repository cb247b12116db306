"""Long-range reports: billing and audit over the whole log, read from the archive's Parquet
segments and the live tail of the log, never loaded into Valkey.

Each partition is read in two parts: the segments its archive's manifest lists (read once, up
to the manifest's last position), scanned with the report's kinds and times pushed down
(``services.core.segments.selection``: only those row groups and columns are read), then the
log after that position through ``ArchivedLog``, which takes whatever was archived meanwhile
from the archive and the rest from the stream.

Invariants:
- Every entry of the log is read once: from the archive if the manifest read lists it, else
  from the log after the manifest's last position (``ArchivedLog``'s own rule: what the stream
  lacks is archived), whatever the archiver does meanwhile.
- Only the kinds a report needs are decoded: picked by the ``kind`` column in Parquet and by the
  entry's ``k`` field in the log, before any body is decoded (``Want``).
- The rules are the projections' own: billing folds with ``BillingProjection`` and sums with
  ``billing.report``, audit renders each event with ``audit.entry_of``. An entry that cannot
  be decoded is skipped, as the folds skip it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis

from events import codec
from events.codec import Recorded
from events.errors import UndecodableEvent
from events.model import AttemptScheduled, RunSubmitted
from projections import billing
from projections.audit import AuditProjection, Entry, entry_of
from projections.billing import BillingProjection, GroupBy, Period, Report
from services.core import segments
from services.core.archive import (
    Archive,
    ArchivedLog,
    Manifest,
    NoArchive,
    Position,
    before,
    parse,
    partition_root,
    show,
)

_PAGE = 10_000
#: Where an attempt's billing starts: one that starts after a window bills nothing in it, so
#: these are read up to the window's end only. The other kinds are read whole: an attempt that
#: ended before the window must not look open, nor one that ended after it, and usage reported
#: after the window still weighs its mean utilization.
_STARTS = frozenset({RunSubmitted, AttemptScheduled})


@dataclass(frozen=True)
class Want:
    """Entries of some kinds logged within [since, until) (None: no bound)."""

    kinds: frozenset[bytes]
    since_ms: int | None = None
    until_ms: int | None = None

    def takes(self, kind: bytes | None, ms: int) -> bool:
        return (
            kind in self.kinds
            and (self.since_ms is None or ms >= self.since_ms)
            and (self.until_ms is None or ms < self.until_ms)
        )


@dataclass
class Tally:
    """What a report read: entries decoded from the archive as first read, from the log after
    it (``ArchivedLog``: what was archived meanwhile included), and those skipped."""

    archived: int = 0
    live: int = 0
    undecodable: int = 0
    #: Per partition, the archive's last position as read (``0-0``: nothing archived).
    archived_upto: list[str] = field(default_factory=list)


async def records(
    client: aioredis.Redis, root: Path, partitions: int, wants: Sequence[Want], tally: Tally
) -> AsyncIterator[tuple[int, Recorded]]:
    """Every entry ``wants`` takes, decoded, with its partition: a partition after another,
    each in log order."""
    for partition in range(partitions):
        here = partition_root(root, partition)
        manifest = _manifest(root, here)
        tally.archived_upto.append(show(manifest.last))
        for position, flat in await asyncio.to_thread(_archived, here, manifest, wants):
            if (record := _decoded(position, flat, tally)) is not None:
                tally.archived += 1
                yield partition, record
        async for record in _live(client, partition, here, manifest.last, wants, tally):
            tally.live += 1
            yield partition, record


def _manifest(root: Path, here: Path) -> Manifest:
    """The manifest of a partition's archive ``here`` (none yet: an empty one)."""
    if not root.is_dir():
        raise NoArchive(root)
    return Archive(here).manifest()


def _archived(
    root: Path, manifest: Manifest, wants: Sequence[Want]
) -> list[tuple[str, list[bytes]]]:
    """The listed segments' entries that ``wants`` take (segments wholly outside every
    want's times are not opened)."""
    since = _least(w.since_ms for w in wants)
    until = _most(w.until_ms for w in wants)
    paths = [
        s.path
        for s in manifest.segments
        if (since is None or parse(s.last)[0] >= since)
        and (until is None or parse(s.first)[0] < until)
    ]
    where = None
    for want in wants:
        one = segments.selection(want.kinds, want.since_ms, want.until_ms)
        where = one if where is None else where | one
    return [] if where is None else segments.scan(root, paths, where)


async def _live(  # noqa: PLR0917 - one partition's reader and the report's own
    client: aioredis.Redis,
    partition: int,
    root: Path,
    archived: Position,
    wants: Sequence[Want],
    tally: Tally,
) -> AsyncIterator[Recorded]:
    since = _least(w.since_ms for w in wants)
    until = _most(w.until_ms for w in wants)
    start = archived if since is None else max(archived, before((since, 0)))
    kinds = frozenset().union(*(want.kinds for want in wants))
    reader = ArchivedLog(client, partition, root)
    after = show(start)
    while True:
        page = await reader.read(after, _PAGE)
        # The hot loop: most entries are of kinds not wanted, told by one set lookup.
        for position, flat in page:
            kind = flat[1] if flat[0] == codec.KIND else codec.fields_of(flat).get(codec.KIND)
            if kind not in kinds:
                continue
            ms = int(position[: position.index("-")])
            if until is not None and ms >= until:
                return
            wanted = any(want.takes(kind, ms) for want in wants)
            if wanted and (record := _decoded(position, flat, tally)) is not None:
                yield record
        if len(page) < _PAGE or (until is not None and parse(page[-1][0])[0] >= until):
            return
        after = page[-1][0]


def _decoded(position: str, flat: list[bytes], tally: Tally) -> Recorded | None:
    try:
        return codec.recorded_from(position, flat)
    except UndecodableEvent:
        tally.undecodable += 1
        return None


def _least(values: Iterable[int | None]) -> int | None:
    """The least bound, None if any is unbounded."""
    found = list(values)
    return None if None in found else min(v for v in found if v is not None)


def _most(values: Iterable[int | None]) -> int | None:
    """The greatest bound, None if any is unbounded."""
    found = list(values)
    return None if None in found else max(v for v in found if v is not None)


# --- billing ---------------------------------------------------------------------------------


def billing_wants(window: tuple[int, int] | None) -> list[Want]:
    """What a bill over ``window`` reads: the billing fold's kinds, its starts up to the end."""
    rest = frozenset(BillingProjection.handles - _STARTS)
    return [
        Want(codec.kinds_of(_STARTS), until_ms=None if window is None else window[1]),
        Want(codec.kinds_of(rest)),
    ]


async def billing_report(
    client: aioredis.Redis,
    root: Path,
    *,
    partitions: int,
    group_by: GroupBy,
    per: Period | None = None,
    window: tuple[int, int] | None = None,
    now: int | None = None,
    prices: Mapping[str, Decimal] | None = None,
) -> tuple[Report, dict[str, str], Tally]:
    """``billing.report`` of the whole log (archive and live), with the names of its runs (by
    run id), and what was read."""
    fold = BillingProjection()
    tally = Tally()
    async for _, record in records(client, root, partitions, billing_wants(window), tally):
        fold.apply(record)
    attempts = fold.attempts.values()
    report = billing.report(attempts, group_by, window=window, now=now, prices=prices, per=per)
    return report, {a.run_id: a.run_name for a in attempts}, tally


# --- audit -----------------------------------------------------------------------------------


def audit_wants(window: tuple[int, int] | None) -> list[Want]:
    """What an audit over ``window`` reads: the audited kinds within it, and the runs' names."""
    since, until = window if window is not None else (None, None)
    return [
        Want(codec.kinds_of(AuditProjection.handles), since, until),
        Want(codec.kinds_of([RunSubmitted]), until_ms=until),
    ]


async def audit_entries(
    client: aioredis.Redis,
    root: Path,
    *,
    partitions: int,
    window: tuple[int, int] | None = None,
    user: str | None = None,
    run: str | None = None,
    limit: int | None = None,
) -> tuple[list[Entry], Tally]:
    """The audit entries of the whole log (archive and live) within ``window``, oldest first
    (each partition's in its log order, across them by time): of one actor (``user``), of one
    run (``run``: its id or name), up to ``limit``."""
    tally = Tally()
    names: dict[str, str] = {}
    pages: list[list[Entry]] = [[] for _ in range(partitions)]
    wanted = audit_wants(window)
    async for partition, record in records(client, root, partitions, wanted, tally):
        event = record.event
        if type(event) is RunSubmitted:
            names.setdefault(event.run_id, event.name)
        if window is not None and not window[0] <= event.time < window[1]:
            continue  # a submission read for its run's name only
        entry = entry_of(record, names)
        if entry is not None and _about(entry, user, run):
            pages[partition].append(entry)
    merged = heapq.merge(*pages, key=lambda entry: entry.time)
    return list(itertools.islice(merged, limit)), tally


def _about(entry: Entry, user: str | None, run: str | None) -> bool:
    return (user is None or entry.actor == user) and (
        run is None or run in (entry.run_id, entry.run_name)
    )
