"""Archiving the global log: what may go, writing it to the archive, and only then trimming.

One pass (``archive_log``):
1. forget segment files the manifest does not list (a crashed pass's leftovers);
2. the safe point: the least of the cut-off, every consumer group's progress (its last
   delivered entry, and nothing pending before it) and every projection's active checkpoint;
3. the entries after the manifest's last position up to the safe point, a segment per day
   (UTC, log time), each written atomically and then listed in the manifest;
4. the server's pointer set to the manifest's last position, then the stream trimmed up to it;
5. runs' own streams, once the archive holds all of a run's and the run is at rest (its last
   event ends an attempt, or deletes it): their versions and segments written to the archive's
   index of retired histories (``services.core.retired``), then each stream deleted and its
   bucket's count of retirements raised, together (``retire_runs``; ``runplane_retire2`` in
   ``append.lua``). The server keeps nothing else of a retired run. The pointer's ``retired``
   says how far the archived entries were looked at;
6. the nodes' inboxes trimmed of their copies older than the cut-off (``trim_inboxes``);
7. the day's newest segments merged (``Archive.merge``): a merged segment written, then listed
   in place of the two, which the next pass deletes.

Each partition of the log is archived on its own, one after another (``archive_partitions``),
to its own archive in the directory (``services.core.archive.partition_root``).

A kill -9 anywhere loses nothing and duplicates nothing: a segment written but not listed is
deleted and written again; a listed one is never written again (the next pass starts after
it); the pointer and the trim go to the manifest's last position, whatever that pass archived;
runs whose ends a pass archived but did not look at are retired by the next; a record in the
index whose stream did not go is never read (the stream is there), and the next pass writes
another; a merged segment not yet listed is deleted, the two it merges still listed. Running it
again is harmless.

A retired run's history reads its segments (``services.core.store``); an event for it first
restores its stream from them (``runplane_restore2``), so the nodes, which may not see the
archive, only ever read live streams. A run appended to between the archiver's read and its
retirement keeps its stream (the function checks the stream's last entry), as does one still
at work.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
import structlog

from events import codec, keys
from events.model import ATTEMPT_ENDS, RunDeleted, is_run, tag_of
from projections import catalog
from projections.base import parse_checkpoint
from services.core.archive import (
    ZERO,
    Archive,
    ArchivedLog,
    Entry,
    Pointer,
    Position,
    after,
    aggregate_of,
    before,
    day_of,
    parse,
    partition_root,
    pointer,
    set_pointer,
    show,
)
from services.core.client import raw_ranges
from services.core.groups import text
from services.core.retired import Retired

log = structlog.get_logger(__name__)

#: Named steps of a pass, for a test that kills the process at one of them.
WRITTEN, LISTED, POINTED, TRIMMED = "written", "listed", "pointed", "trimmed"
INDEXED, RETIRED = "indexed", "retired"
#: The function that deletes a history's stream once archived (``append.lua``).
RETIRE_FUNCTION = "runplane_retire2"
Hook = Callable[[str], None]
CUT_OFF = "the cut-off"
_PAGE = 10_000


class ArchiveMoved(Exception):
    """The log was archived to another directory than the one given."""

    def __init__(self, archived_to: str, given: Path) -> None:
        super().__init__(
            f"the log is archived in {archived_to}, not {given}: archive there "
            "(RUNPLANE_EVENT_ARCHIVE or --dir), or move that directory there first"
        )
        self.archived_to = archived_to
        self.given = given


@dataclass(frozen=True)
class Archived:
    """What one pass moved."""

    events: int
    runs: int
    segments: int
    trimmed: int  # entries removed from the stream
    upto: str  # the archive's last position ("0-0": nothing archived yet)
    held_by: str  # what set the safe point: "cut-off", or the reader still behind it
    retired: int = 0  # runs' own streams that went (their histories are in the archive)
    inbox_entries: int = 0  # copies trimmed from the nodes' inboxes
    merged: int = 0  # merges of segments (``Archive.merge``)


@dataclass(frozen=True)
class Bound:
    """One limit on the safe point, and who sets it."""

    position: Position
    why: str


async def safe_point(client: aioredis.Redis, partition: int, cutoff_ms: int) -> Bound:
    """The last position every reader is done with, and that is older than ``cutoff_ms``."""
    stream = keys.log_stream(partition)
    bounds = [Bound(before((cutoff_ms, 0)), CUT_OFF)]
    if await client.exists(stream):
        for info in await client.xinfo_groups(stream):
            name = text(info["name"])
            progress = parse(text(info["last-delivered-id"]))
            pending = await client.xpending(stream, name)
            if pending["pending"]:
                progress = min(progress, before(parse(text(pending["min"]))))
            bounds.append(Bound(progress, f"consumer group {name}"))
    for name in catalog.NAMES:
        active = await client.get(keys.projection_active(name))
        if active is None:
            continue
        checkpoint = await client.get(keys.projection_checkpoint(name, text(active)))
        stood = parse_checkpoint(text(checkpoint)) if checkpoint else ()
        at = stood[partition] if partition < len(stood) else ZERO
        bounds.append(Bound(at, f"projection {name}"))
    return min(bounds, key=lambda b: b.position)


async def archive_older(
    client: aioredis.Redis, root: Path, *, older_than_s: float, partitions: int
) -> Archived:
    """``archive_partitions`` of what is older than ``older_than_s`` on the log's own clock
    (the server's ``TIME``, not this host's): ``mcli admin archive --before`` and the
    log-collector's ``RUNPLANE_RETAIN``."""
    seconds, micros = await client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    cutoff_ms = now_ms - int(older_than_s * 1000)
    return await archive_partitions(client, root, cutoff_ms=cutoff_ms, partitions=partitions)


async def archive_partitions(
    client: aioredis.Redis, root: Path, *, cutoff_ms: int, partitions: int
) -> Archived:
    """``archive_log`` of every partition, each to its archive in ``root``; what they moved,
    together (``upto``: each partition's, comma-separated)."""
    done = [
        await archive_log(
            client, Archive(partition_root(root, p)), cutoff_ms=cutoff_ms, partition=p
        )
        for p in range(partitions)
    ]
    held = [d.held_by for d in done if d.held_by != CUT_OFF]
    return Archived(
        events=sum(d.events for d in done),
        runs=sum(d.runs for d in done),  # a run's events are all on one partition
        segments=sum(d.segments for d in done),
        trimmed=sum(d.trimmed for d in done),
        upto=",".join(d.upto for d in done),
        held_by=held[0] if held else CUT_OFF,
        retired=sum(d.retired for d in done),
        inbox_entries=sum(d.inbox_entries for d in done),
        merged=sum(d.merged for d in done),
    )


async def archive_log(
    client: aioredis.Redis,
    archive: Archive,
    *,
    cutoff_ms: int,
    partition: int = 0,
    segment_events: int = 100_000,
    hook: Hook | None = None,
) -> Archived:
    """One pass: archive what is safe and older than ``cutoff_ms``, then trim it (see above).
    ``hook`` is called with each step's name once it is done (tests kill the process there)."""
    step = hook or (lambda _: None)
    root = archive.root.resolve()
    found = await pointer(client, partition)
    if found is not None and Path(found.dir) != root:
        raise ArchiveMoved(found.dir, root)
    archive.root.mkdir(parents=True, exist_ok=True)
    with archive.locked():
        done = await _archive_pass(
            client, archive, root, cutoff_ms, partition, segment_events, step, found
        )
        merged = await asyncio.to_thread(archive.merge, step=step)
    if merged:
        log.info("archive.merged", merges=merged, segments=len(archive.manifest().segments))
    return dataclasses.replace(done, merged=merged)


async def _archive_pass(  # noqa: PLR0917 - archive_log's own arguments, checked
    client: aioredis.Redis,
    archive: Archive,
    root: Path,
    cutoff_ms: int,
    partition: int,
    segment_events: int,
    step: Hook,
    found: Pointer | None,
) -> Archived:
    for path in [*archive.forget_unlisted(), *archive.index.forget_unlisted()]:
        log.info("archive.leftover_removed", path=str(path))
    bound = await safe_point(client, partition, cutoff_ms)
    start = archive.manifest().last
    reader = ArchivedLog(client, partition, archive.root)
    events, segments = 0, 0
    runs: set[str] = set()
    day: list[Entry] = []
    resting: set[str] = set()  # runs whose archived entries left them at rest

    def flush() -> None:
        nonlocal segments
        segment = archive.write(day)
        step(WRITTEN)
        archive.add(segment)
        step(LISTED)
        segments += 1
        day.clear()

    def take(page: list[Entry]) -> None:
        for entry in page:
            if day and (
                len(day) >= segment_events or day_of(parse(entry[0])) != day_of(parse(day[0][0]))
            ):
                flush()
            day.append(entry)
            aggregate = aggregate_of(*entry)
            if is_run(aggregate):
                runs.add(aggregate)
                if _rests(entry):
                    resting.add(aggregate)

    # Decoding and Parquet in a worker thread, a page at a time: the event loop of the process
    # that archives (the log-collector, under RUNPLANE_RETAIN) goes on serving meanwhile.
    position = start
    while position < bound.position:
        page = await reader.read(show(position), _PAGE)
        page = [entry for entry in page if parse(entry[0]) <= bound.position]
        if not page:
            break
        await asyncio.to_thread(take, page)
        events += len(page)
        position = parse(page[-1][0])
    if day:
        await asyncio.to_thread(flush)
    upto = archive.manifest().last
    trimmed, retired = 0, 0
    if upto != ZERO:
        looked = parse(found.retired) if found is not None else ZERO
        await set_pointer(client, partition, Pointer(str(root), show(upto), show(looked)))
        step(POINTED)
        trimmed = int(
            await client.xtrim(
                keys.log_stream(partition), minid=show(after(upto)), approximate=False
            )
        )
        step(TRIMMED)
        resting |= await asyncio.to_thread(_resting_before, archive, looked, start)
        retired = await retire_runs(client, archive, partition, sorted(resting), upto, step)
        await set_pointer(client, partition, Pointer(str(root), show(upto), show(upto)))
        step(RETIRED)
    told = await trim_inboxes(client, partition, cutoff_ms)
    log.info(
        "archive.done",
        events=events,
        runs=len(runs),
        segments=segments,
        trimmed=trimmed,
        retired=retired,
        inbox_entries=told,
        upto=show(upto),
        bound=bound.why,
    )
    return Archived(events, len(runs), segments, trimmed, show(upto), bound.why, retired, told)


#: The tags of the events after which a run is at rest (of any version): an attempt's end, or
#: the run's deletion.
_RESTING = frozenset(tag_of(kind).encode() for kind in ATTEMPT_ENDS | {RunDeleted})
#: Keys a pipeline of the pass names at most (runs retired, inboxes trimmed).
_BATCH = 500


def _resting_before(archive: Archive, looked: Position, start: Position) -> set[str]:
    """The runs left at rest by archived entries after ``looked`` up to ``start``: what a pass
    cut short before it retired runs had archived (none where ``looked`` is ``start``)."""
    resting: set[str] = set()
    while looked < start:
        page = archive.read(looked, start, _PAGE)
        resting |= {aggregate_of(*entry) for entry in page if _rests(entry)}
        looked = parse(page[-1][0]) if page else start
    return resting


def _rests(entry: Entry) -> bool:
    flat = entry[1]
    return len(flat) > 1 and flat[0] == codec.KIND and flat[1].partition(b"@")[0] in _RESTING


async def trim_inboxes(client: aioredis.Redis, partition: int, cutoff_ms: int) -> int:
    """Trim the nodes' inboxes of ``partition`` (``events.inbox``) of their copies older than
    ``cutoff_ms``; how many went. They are copies of the log's entries: an agent that had not
    read them by then recovers its runs from their histories (``NodeAgent.reconcile``)."""
    inboxes = [
        key
        async for key in client.scan_iter(
            match=keys.inbox(keys.ANY, partition), count=1000, _type="stream"
        )
    ]
    trimmed = 0
    for at in range(0, len(inboxes), _BATCH):
        pipe = client.pipeline(transaction=False)
        for inbox in inboxes[at : at + _BATCH]:
            pipe.xtrim(inbox, minid=f"{cutoff_ms}-0", approximate=False)
        trimmed += sum(int(n) for n in await pipe.execute())
    return trimmed


async def retire_runs(  # noqa: PLR0917 - the pass's own arguments
    client: aioredis.Redis,
    archive: Archive,
    partition: int,
    runs: list[str],
    upto: Position,
    step: Hook | None = None,
) -> int:
    """Delete the streams of ``runs`` (their aggregates) that the archive holds all of, up to
    ``upto``, and whose last event left them at rest, once each one's version and segments
    (``Retired``) are in the archive's index (``services.core.retired``); how many went. One
    that moved meanwhile keeps its stream (its record in the index is then never read)."""
    if moved := await index_former_records(client, archive, partition):
        log.info("archive.former_records_indexed", histories=moved)
    raw = raw_ranges(client)
    retired_key = keys.retired(partition)
    records: dict[str, Retired] = {}
    going: list[tuple[str, str]] = []  # (stream, its last entry as read)
    for at in range(0, len(runs), _BATCH):
        batch = runs[at : at + _BATCH]
        pipe = raw.pipeline(transaction=False)
        for run in batch:
            pipe.execute_command("XRANGE", keys.aggregate_stream(run, partition), "-", "+")
        for run, entries in zip(batch, await pipe.execute(), strict=True):
            if not entries:
                continue  # gone already
            last_position, last = entries[-1][0].decode(), entries[-1][1]
            if parse(last_position) > upto or not _rests((last_position, last)):
                continue  # not all archived yet, or still at work
            held = archive.places_of(parse(p.decode()) for p, _ in entries)
            records[run] = Retired(int(codec.fields_of(last)[codec.VERSION]), tuple(sorted(held)))
            going.append((keys.aggregate_stream(run, partition), last_position))
    await asyncio.to_thread(archive.index.add, records)
    if step is not None:
        step(INDEXED)
    gone = 0
    for at in range(0, len(going), _BATCH):
        pipe = raw.pipeline(transaction=False)
        for stream, last_position in going[at : at + _BATCH]:
            bucket = keys.retirement_bucket(stream)
            pipe.fcall(RETIRE_FUNCTION, 2, stream, retired_key, last_position, bucket)
        gone += sum(int(done) for done in await pipe.execute())
    return gone


async def index_former_records(client: aioredis.Redis, archive: Archive, partition: int) -> int:
    """Move what a former version kept of each retired history in the server (a field of
    ``keys.retired`` per stream) to the archive's index, then raise the field's bucket and
    delete it, in that order: a reader finds the history in one or the other throughout. How
    many moved."""
    retired_key = keys.retired(partition)
    prefix = keys.aggregate_stream("", partition)
    moved = 0
    while True:
        fields: dict[bytes, bytes] = {}
        async for field, value in client.hscan_iter(retired_key, match=f"{prefix}*", count=_BATCH):
            fields[field] = value
            if len(fields) == _BATCH:
                break
        if not fields:
            return moved
        records = {
            field.decode().removeprefix(prefix): Retired.decode(value)
            for field, value in fields.items()
        }
        await asyncio.to_thread(archive.index.add, records)
        pipe = client.pipeline(transaction=False)
        for field in fields:
            pipe.hincrby(retired_key, keys.retirement_bucket(field.decode()), 1)
            pipe.hdel(retired_key, field)
        await pipe.execute()
        moved += len(fields)
