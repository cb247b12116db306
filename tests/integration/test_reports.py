"""Long-range reports over the archive's Parquet and the live log, on a real server: after
archiving part of the log, the bill and the audit are the projections' own, to the millisecond;
a window that cuts through an attempt bills its share; no entry is read twice, or missed, at
the boundary, even while the archiver moves it; ``mcli admin report`` says so, or one line."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from events import codec, keys
from events.codec import Recorded
from events.model import ALL_EVENT_TYPES
from projections import billing, query
from projections.audit import AuditProjection, Entry
from projections.billing import BillingProjection, GroupBy
from projections.catalog import NAMES
from services.core import reports
from services.core.archive import Archive, ArchivedLog, parse
from services.core.archiver import archive_log, archive_partitions
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.projector.lanes import rebuild_many
from tests.integration.projector.test_projector_process import append_all, simulated_events
from tests.integration.test_archive import mcli_admin

LOG = keys.log_stream(0)
EVERYTHING = 2**62  # a cut-off after every entry
GROUPINGS: tuple[GroupBy, ...] = ("user", "cluster", "gpu_type", "run", "day", "attempt")


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


async def half_archived(
    store: EventStore, redis: aioredis.Redis, root: Path, *, seed: int = 11, steps: int = 700
) -> list[Recorded]:
    """A log of which about half is archived to ``root`` (the projections caught up first:
    they hold the archive back); the whole log, as it reads."""
    await append_all(store, simulated_events(seed=seed, steps=steps, runs=12))
    whole = [record async for record in store.replay()]
    await rebuild_many(store.settings, NAMES, now_ms=1, lanes=1)
    middle = parse(whole[len(whole) // 2].position)[0]
    done = await archive_log(redis, Archive(root), cutoff_ms=middle, segment_events=60)
    assert 0 < done.trimmed < len(whole)
    assert await redis.xlen(LOG) == len(whole) - done.events
    return whole


def folded(whole: list[Recorded]) -> BillingProjection:
    fold = BillingProjection()
    for record in whole:
        fold.apply(record)
    return fold


def cutting_window(whole: list[Recorded]) -> tuple[int, int]:
    """A window that starts halfway through the longest closed attempt and ends before the
    log does."""
    fold = folded(whole)
    closed = [a for a in fold.attempts.values() if a.ended_at is not None]
    longest = max(closed, key=lambda a: (a.ended_at or 0) - a.started_at)
    assert longest.ended_at is not None
    assert longest.ended_at - longest.started_at >= 2, "an attempt to cut through"
    start = (longest.started_at + longest.ended_at) // 2
    return start, parse(whole[-3].position)[0]


async def test_a_bill_over_the_archive_and_the_live_log_is_the_projections(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    whole = await half_archived(store, redis, tmp_path)
    now = parse(whole[-1].position)[0] + 1000
    window = cutting_window(whole)
    for group_by in GROUPINGS:
        for within in (None, window):
            expected = await query.billing_report(redis, group_by, window=within, now=now)
            found, _, tally = await reports.billing_report(
                redis, tmp_path, partitions=1, group_by=group_by, window=within, now=now
            )
            assert found == expected, (group_by, within)
            assert tally.archived > 0
            assert tally.live > 0
            assert tally.archived_upto == [Archive(tmp_path).manifest().segments[-1].last]
    assert (await query.billing_report(redis, "user", now=now)).gpu_ms > 0
    # Per day and month: the same fold's lines, split.
    attempts = folded(whole).attempts.values()
    for per in billing.PERIODS:
        found, names, _ = await reports.billing_report(
            redis, tmp_path, partitions=1, group_by="run", per=per, now=now
        )
        assert found == billing.report(attempts, "run", now=now, per=per)
        assert names == {a.run_id: a.run_name for a in attempts}


async def test_a_window_through_an_attempt_bills_its_share_only(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    whole = await half_archived(store, redis, tmp_path, seed=12)
    start, end = cutting_window(whole)
    found, _, _ = await reports.billing_report(
        redis, tmp_path, partitions=1, group_by="attempt", window=(start, end)
    )
    for attempt in folded(whole).attempts.values():
        if attempt.ended_at is None:
            continue
        key = f"{attempt.run_id}:{attempt.attempt}"
        share = attempt.gpus * max(0, min(attempt.ended_at, end) - max(attempt.started_at, start))
        lines = [line.gpu_ms for line in found.lines if line.key == key]
        assert lines == ([share] if share else []), key


async def test_no_entry_is_read_twice_or_missed_while_the_archiver_moves_the_boundary(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    whole = await half_archived(store, redis, tmp_path, seed=13)
    everything = reports.Want(codec.kinds_of(ALL_EVENT_TYPES))
    tally = reports.Tally()
    read = reports.records(redis, tmp_path, 1, [everything], tally)
    first = [await anext(read)]  # the manifest and the archived part are read by now
    moved = await archive_log(redis, Archive(tmp_path), cutoff_ms=EVERYTHING, segment_events=60)
    assert moved.trimmed > 0, "the boundary moved while the report read"
    rest = [record async for record in read]
    positions = [record.position for _, record in first + rest]
    assert positions == [record.position for record in whole]
    assert tally.archived + tally.live == len(whole)
    assert tally.live > 0  # read after the first manifest: in the archive now, all the same


async def test_only_the_kinds_a_report_needs_are_decoded(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    whole = await half_archived(store, redis, tmp_path, seed=14)
    _, _, tally = await reports.billing_report(redis, tmp_path, partitions=1, group_by="user")
    billed = [r for r in whole if type(r.event) in BillingProjection.handles]
    assert 0 < tally.archived + tally.live == len(billed) < len(whole)


def by_time(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (e.time, parse(e.position)))


async def test_an_audit_over_the_archive_and_the_live_log_is_the_projections(
    store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    whole = await half_archived(store, redis, tmp_path, seed=15)
    window = cutting_window(whole)
    everyone = await query.audit(redis, limit=1_000_000, log=ArchivedLog(redis))
    found, tally = await reports.audit_entries(redis, tmp_path, partitions=1)
    assert found == everyone
    assert tally.archived > 0
    assert tally.live > 0
    actors = sorted({e.actor for e in everyone})
    runs = sorted({e.run_id for e in everyone if e.run_id is not None})
    assert len(actors) > 1
    for within in (None, window):
        for actor in actors:
            expected = await query.audit(redis, user=actor, window=within, limit=1_000_000)
            mine, _ = await reports.audit_entries(
                redis, tmp_path, partitions=1, user=actor, window=within
            )
            assert mine == by_time(expected), (actor, within)
        for run in runs[:4]:
            expected = await query.audit(redis, run=run, window=within, limit=1_000_000)
            mine, _ = await reports.audit_entries(
                redis, tmp_path, partitions=1, run=run, window=within
            )
            assert mine == by_time(expected), (run, within)
    # Within a window that starts after a run was submitted, its entries still name it.
    late, _ = await reports.audit_entries(redis, tmp_path, partitions=1, window=window)
    assert late
    assert all(e.run_name for e in late if e.run_id is not None)
    assert late == [e for e in everyone if window[0] <= e.time < window[1]]
    first_two, _ = await reports.audit_entries(redis, tmp_path, partitions=1, limit=2)
    assert first_two == everyone[:2]


def mcli_report(tmp_path: Path, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    return mcli_admin(tmp_path, "report", *args, env={"RUNPLANE_REDIS_URL": url})


async def test_the_operator_reports_with_mcli_admin_report(
    store: EventStore, redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    await half_archived(store, redis, root, seed=16)
    closed = await query.billing_report(redis, "user")
    bill = await asyncio.to_thread(
        mcli_report, tmp_path, "billing", "--by", "user", "--per", "month", "-o", "json",
        "--dir", str(root), url=redis_url,
    )  # fmt: skip
    assert bill.returncode == 0, bill.stderr
    shown = json.loads(bill.stdout)
    assert (shown["group_by"], shown["per"]) == ("user", "month")
    # Open attempts count up to the command's own now: only the closed ones are known here.
    assert shown["gpu_ms"] >= closed.gpu_ms > 0
    assert {line["user"] for line in shown["lines"]} == {line.key for line in closed.lines}
    assert bill.stderr.startswith("read ")
    assert "from the archive" in bill.stderr

    audit = await asyncio.to_thread(
        mcli_report, tmp_path, "audit", "-o", "json", "--limit", "5", "--dir", str(root),
        url=redis_url,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stderr
    first = await query.audit(redis, limit=5, log=ArchivedLog(redis))
    assert [e["position"] for e in json.loads(audit.stdout)] == [e.position for e in first]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = await asyncio.to_thread(
        mcli_report, tmp_path, "billing", "--dir", str(elsewhere), url=redis_url
    )
    assert moved.returncode == 1
    assert "cannot be read here" in moved.stderr
    assert len(moved.stderr.splitlines()) == 1


async def test_every_partition_is_reported_once(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    partitions = 3
    settings = Settings(redis_url=redis_url, partitions=partitions)
    store = EventStore(connect(redis_url), settings)
    try:
        await append_all(store, simulated_events(seed=17, steps=700, runs=12))
        whole = [[r async for r in store.replay(p)] for p in range(partitions)]
        assert all(whole), "every partition has events"
        await rebuild_many(settings, NAMES, now_ms=1, lanes=1)
        times = sorted(parse(r.position)[0] for records in whole for r in records)
        done = await archive_partitions(
            redis, tmp_path, cutoff_ms=times[len(times) // 2], partitions=partitions
        )
        assert 0 < done.trimmed < len(times)
    finally:
        await store.close()
    now = times[-1] + 1000
    for group_by in GROUPINGS:
        expected = await query.billing_report(redis, group_by, now=now)
        found, _, tally = await reports.billing_report(
            redis, tmp_path, partitions=partitions, group_by=group_by, now=now
        )
        assert found == expected, group_by
        assert len(tally.archived_upto) == partitions
    readers = [ArchivedLog(redis, p) for p in range(partitions)]
    everyone = await query.audit(redis, limit=1_000_000, log=readers)
    found_entries, tally = await reports.audit_entries(redis, tmp_path, partitions=partitions)
    assert found_entries == everyone
    audited = [r for records in whole for r in records if type(r.event) in AuditProjection.handles]
    assert tally.archived + tally.live == len(audited) < sum(map(len, whole))
