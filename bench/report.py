"""Figures of the long-range reports: a year-long bill by user by month over the archive's
Parquet, against the same bill over the live log; bytes per event in Valkey and in Parquet.

``python -m bench.report`` (200,000 events) or ``--events N``. It starts its own
``valkey-server`` in a temp dir, synthesizes a year of runs' events (``bench.projections``'
workload, its clock stretched so that the log spans 365 days: runs' attempts cross days and
months) and holds the same entries twice: in the global stream (XADD at their ids) and as an
archive of day segments (``Archive.write``/``add``/``merge``, as the archiver writes them:
``--passes-a-day`` passes, their segments merged as they come, or not: ``--unmerged``). Then, each
the best of ``--repeat`` rounds:

- parquet: ``services.core.reports.billing_report`` by user per month over the year, reading
  the archive (kinds and times pushed down) and the live tail after it (empty here);
- live, picked: the same function with an empty archive: the whole log from Valkey, the
  billing kinds picked by each entry's ``k`` before decoding;
- live, replayed: the projections' way, the baseline: ``EventStore.replay`` (every entry
  decoded) folded by ``BillingProjection``, then ``billing.report``.

The three reports must be equal (checked). It prints each time, the ratios against the
replayed baseline, the fold and report alone (the floor of all three), and bytes per event:
the stream's ``MEMORY USAGE`` over its entries against the segments' file bytes over theirs.
Also an audit of the year's last 30 days both ways.

The workload's runs are those of ``bench.projections``, interleaved 400 at a time, so with its
clock stretched each lasts days to weeks: the GPU-hours are large; the shape (attempts across
days and months) is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import groupby
from pathlib import Path
from typing import TypeVar

import redis.asyncio as aioredis

from bench.processes import on_a_server
from bench.projections import START_MS, workload
from events import codec, keys
from events.codec import Recorded
from events.usage import DAY_MS
from projections import billing
from projections.billing import BillingProjection, Report
from services.core import reports
from services.core.archive import Archive, Entry, day_of, parse
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore

LOG = keys.log_stream(0)
YEAR_MS = 365 * DAY_MS
T = TypeVar("T")


async def fill(
    client: aioredis.Redis, root: Path, total: int, passes: int, merge: bool
) -> tuple[int, int]:
    """Write ``total`` entries over a year to the stream and, as ``archived`` does, to the
    archive at ``root``; the number of runs and the segments' bytes."""
    step_ms = max(1, 2 * YEAR_MS // total)  # a mean step of YEAR_MS / total
    entries = [
        (position, [codec.KIND, f[codec.KIND], codec.BODY, f[codec.BODY], codec.VERSION,
                    f[codec.VERSION]])
        for position, f in workload(total, step_ms=step_ms)
    ]  # fmt: skip
    pipe = client.pipeline(transaction=False)
    for n, (position, flat) in enumerate(entries, 1):
        pipe.xadd(LOG, dict(zip(flat[::2], flat[1::2], strict=True)), id=position)
        if n % 5000 == 0:
            await pipe.execute()
    await pipe.execute()
    runs = sum(flat[1].startswith(b"run.submitted@") for _, flat in entries)
    return runs, await asyncio.to_thread(archived, root, entries, passes, merge)


def archived(root: Path, entries: list[Entry], passes: int, merge: bool) -> int:
    """Write ``entries`` to a new archive at ``root`` as ``passes`` passes a day would, each
    day's in that many segments, merged as the archiver merges them (or not, ``merge``); the
    listed segments' bytes."""
    archive = Archive(root)
    root.mkdir(parents=True)
    for _, of_day in groupby(entries, key=lambda entry: day_of(parse(entry[0]))):
        day = list(of_day)
        size = -(-len(day) // passes)
        for at in range(0, len(day), size):
            archive.add(archive.write(day[at : at + size]))
            if merge:
                archive.merge()
    archive.forget_unlisted()  # the merged, as the next pass does
    return sum((root / s.path).stat().st_size for s in archive.manifest().segments)


async def best(rounds: int, measure: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    """The shortest of ``rounds`` runs of ``measure``, and its result."""
    times: list[float] = []
    result: T
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = await measure()
        times.append(time.perf_counter() - t0)
    return min(times), result


async def run(args: argparse.Namespace, url: str, workdir: Path) -> int:
    client = connect(url)
    total = args.events
    print(f"filling {total:,} events over 365 days (stream and Parquet) ...", flush=True)
    t0 = time.perf_counter()
    archived, empty = workdir / "archive", workdir / "empty"
    empty.mkdir()
    runs, parquet_bytes = await fill(client, archived, total, args.passes_a_day, not args.unmerged)
    stream_bytes = int(await client.memory_usage(LOG, samples=0) or 0)
    listed = Archive(archived).manifest().segments
    print(
        f"  {runs:,} runs; {args.passes_a_day} passes a day wrote {sum(s.places for s in listed):,}"
        f" segments, listed as {len(listed):,}; {time.perf_counter() - t0:.1f} s"
    )
    window = (START_MS, START_MS + YEAR_MS)
    now = window[1]

    async def over(root: Path) -> tuple[Report, reports.Tally]:
        report, _, tally = await reports.billing_report(
            client, root, partitions=1, group_by="user", per="month", window=window, now=now
        )
        return report, tally

    store = EventStore(connect(url), Settings(redis_url=url))

    def folded(records: Iterable[Recorded]) -> Report:
        fold = BillingProjection()
        for record in records:
            if type(record.event) in fold.handles:
                fold.apply(record)
        attempts = fold.attempts.values()
        return billing.report(attempts, "user", window=window, now=now, per="month")

    async def replayed() -> Report:
        return folded([record async for record in store.replay()])

    async def in_memory(records: list[Recorded]) -> Report:
        return folded(records)

    print(f"a year's bill by user by month, best of {args.repeat} ...", flush=True)
    parquet_s, (parquet, read) = await best(args.repeat, lambda: over(archived))
    picked_s, (picked, _) = await best(args.repeat, lambda: over(empty))
    replay_s, baseline = await best(args.repeat, replayed)
    assert parquet == picked == baseline, "the three reports differ"
    records = [record async for record in store.replay()]
    fold_s, _ = await best(args.repeat, lambda: in_memory(records))
    assert read.live == 0
    months = len({line.period for line in parquet.lines})
    print(
        f"  {len(parquet.lines):,} lines ({months} months), {parquet.gpu_ms / 3_600_000:,.0f} "
        f"GPU-hours; {read.archived:,} of {total:,} events decoded\n"
        f"  parquet:         {parquet_s:7.2f} s\n"
        f"  live, picked:    {picked_s:7.2f} s\n"
        f"  live, replayed:  {replay_s:7.2f} s   (baseline)\n"
        f"  ratio replayed / parquet: {replay_s / parquet_s:.1f}x; "
        f"picked / parquet: {picked_s / parquet_s:.1f}x\n"
        f"  of each, the fold and the report alone (decoded events in memory): {fold_s:.2f} s",
        flush=True,
    )

    month = (window[1] - 30 * DAY_MS, window[1])

    async def audit(root: Path) -> int:
        found, _ = await reports.audit_entries(client, root, partitions=1, window=month)
        return len(found)

    audit_parquet_s, entries = await best(args.repeat, lambda: audit(archived))
    audit_live_s, again = await best(args.repeat, lambda: audit(empty))
    assert entries == again, "the two audits differ"
    print(
        f"an audit of the last 30 days ({entries:,} entries):\n"
        f"  parquet: {audit_parquet_s:.2f} s, live: {audit_live_s:.2f} s "
        f"(ratio live / parquet {audit_live_s / audit_parquet_s:.1f}x)",
        flush=True,
    )
    print(
        f"bytes per event: valkey {stream_bytes / total:,.0f} (MEMORY USAGE of the stream, "
        f"{stream_bytes / 2**20:,.1f} MiB), parquet {parquet_bytes / total:,.0f} (files, "
        f"{parquet_bytes / 2**20:,.1f} MiB): {stream_bytes / parquet_bytes:.1f}x",
        flush=True,
    )
    await store.close()
    await client.aclose()
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="events in the year's log")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each (the best)")
    parser.add_argument(
        "--passes-a-day", type=int, default=1, help="archive passes a day (288: every 5 min)"
    )
    parser.add_argument(
        "--unmerged", action="store_true", help="list the passes' segments as they were written"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return on_a_server("report", lambda server, workdir: run(args, server.url, workdir))


if __name__ == "__main__":
    sys.exit(main())
