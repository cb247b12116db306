"""The log over time under retention (issue 16): what stays in Valkey, and in the projector.

``python -m bench.soak`` (10,000,000 events; ``--events N`` for fewer). It starts its own
``valkey-server`` (AOF on, ``appendfsync always``) and a projector process, then:

- appends a realistic mix of runs' events (``bench.projections.interleaved``: 1 to 4 nodes a
  run, setup and exits per rank, retries, stops, deletions) through the append function,
  ``--batch`` aggregates' appends a round trip (``EventStore.append_all``), ``--lanes`` round
  trips in flight (a run's events in one lane, in order);
- every ``--every`` seconds, archives what is older than ``--retain`` and what every reader is
  done with (``archiver.archive_older``, the log-collector's ``RUNPLANE_RETAIN`` pass): the log
  goes to Parquet, the streams of runs at rest go with it, and the projector moves those runs'
  projection rows to Parquet too (``services.projector.cooling``, a pass every
  ``--cool-every``);
- samples Valkey's ``used_memory`` and the projector's RSS every second, and prints start, peak
  and end, with what the server holds at the end, key family by key family;
- prints bytes per event in Valkey (a run's own stream and its global entries, measured over
  the first ``--calibrate`` events before any archiving) against bytes per event in Parquet
  (the archive's files over the events they hold), and the ratio;
- then starts the projector again twice, after a clean stop (SIGTERM: the folds' memory is
  taken up, ``projections.runner``) and after a kill -9 (the whole history folded again,
  archive included), and prints each start's time (its first plan to its last build ready,
  from its own log) and its RSS once settled.

The idempotency keys live ``--idempotency-ttl-s`` (the store's window for a retried append;
7 days by default in a deployment): they are bounded by appends/s x that window, so the soak
shortens it as it shortens retention; likewise the log time a run stays in the projector's
memory once at rest (``--rest-s``, 60 s in a deployment). The year-long billing report over
Parquet against the same report over the live log is ``bench.report``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import cast

import pyarrow.parquet as pq
import redis.asyncio as aioredis

from bench.processes import cpu_s, on_a_server, rss_kib, stop
from bench.projections import interleaved, settled_rss_kib, start_projector, wait_caught_up
from events import keys
from events import model as ev
from events.spans import duration_s
from projections import query
from projections.catalog import NAMES
from services.core.archive import Archive
from services.core.archiver import Archived, archive_older
from services.core.client import connect
from services.core.retired import INDEX, RetiredIndex
from services.core.settings import Settings
from services.core.store import Append, EventStore
from services.core.valkey import ValkeyProcess
from services.projector.cooling import ROWS

MIB = 1024 * 1024
Batch = list[Append]
LOG = keys.log_stream(0)


@dataclass
class Gauge:
    """A figure sampled over the soak: its first, highest and last value."""

    name: str
    unit: float = MIB
    samples: list[int] = field(default_factory=list)

    def add(self, value: int) -> None:
        self.samples.append(value)

    def line(self) -> str:
        start, peak, end = self.samples[0], max(self.samples), self.samples[-1]
        return (
            f"  {self.name:<22} start {start / self.unit:8,.1f}  peak {peak / self.unit:8,.1f}"
            f"  end {end / self.unit:8,.1f} MiB"
        )


@dataclass
class Totals:
    appended: int = 0
    runs: int = 0
    archived: int = 0
    retired: int = 0
    passes: int = 0
    stall_s: float = 0.0
    pass_s: list[float] = field(default_factory=list)
    #: The projector's RSS (KiB) and the runs submitted once half the events were appended.
    half_rss: float | None = None
    half_runs: int = 0

    def add(self, done: Archived, seconds: float) -> None:
        self.archived += done.events
        self.retired += done.retired
        self.passes += 1
        self.pass_s.append(seconds)


async def used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


def batches(events: Iterator[ev.AnyEvent], size: int, lanes: int) -> Iterator[tuple[int, Batch]]:
    """Appends of ``size`` aggregates at most, one event each, in ``lanes`` lanes by aggregate
    (each aggregate's in its order, in its lane): (lane, batch). An aggregate seen twice in a
    lane's batch ends it."""
    pending: list[Batch] = [[] for _ in range(lanes)]
    seen: list[set[str]] = [set() for _ in range(lanes)]
    for event in events:
        lane = zlib.crc32(event.aggregate.encode()) % lanes
        if event.aggregate in seen[lane] or len(pending[lane]) == size:
            yield lane, pending[lane]
            pending[lane], seen[lane] = [], set()
        pending[lane].append(Append([event], expected_version=None))
        seen[lane].add(event.aggregate)
    for lane, batch in enumerate(pending):
        if batch:
            yield lane, batch


async def stream_bytes(client: aioredis.Redis, pattern: str) -> tuple[int, int]:
    """The keys matching ``pattern`` and their ``MEMORY USAGE`` together."""
    count, total = 0, 0
    async for key in client.scan_iter(match=pattern, count=1000):
        count += 1
        total += int(await client.memory_usage(key, samples=0) or 0)
    return count, total


async def families(client: aioredis.Redis) -> list[tuple[str, int, int]]:
    """What the server holds, by key family: (family, keys, bytes)."""
    found: dict[str, list[int]] = {}
    async for raw in client.scan_iter(count=1000):
        key = raw.decode()
        family = _family(key)
        entry = found.setdefault(family, [0, 0])
        entry[0] += 1
        entry[1] += int(await client.memory_usage(raw, samples=0) or 0)
    return sorted(((f, n, b) for f, (n, b) in found.items()), key=lambda row: -row[2])


def _retired(root: Path, count: int) -> list[str]:
    """``count`` runs of the archive's index of retired histories (its newest file)."""
    files = RetiredIndex(root).manifest().files
    if not files:
        return []
    held = pq.read_table(root / files[-1].path, columns=["aggregate"])["aggregate"]
    return cast(list[str], held[:count].to_pylist())


def _family(key: str) -> str:
    if key.startswith(keys.projection_keys()):
        return "projections " + key.removeprefix(keys.projection_keys()).split(":")[0]
    parts = key.split(":")
    if len(parts) > 3 and parts[2] == "agg":
        return f"histories ({parts[3]})"
    if len(parts) > 2 and parts[1].startswith("{p"):
        return "idempotency keys" if parts[2] == "idem" else parts[2]
    return parts[1] if len(parts) > 1 else key


async def wait_cooled(client: aioredis.Redis, every_s: float, deadline_s: float = 600.0) -> int:
    """Until the projector moved the rows of the archived runs it let go to Parquet: the runs
    left in ``run_status``'s index no longer shrink over three of its passes; how many are
    left (at work, or at rest in its memory: a run leaves it ``--rest-s`` of log time after
    it ended, and the log's time stood still once the appends stopped)."""
    statuses = cast(bytes, await client.get(keys.projection_active("run_status"))).decode()
    index = keys.projection_index("run_status", statuses, "created")
    t0 = time.perf_counter()
    seen: list[int] = []
    while time.perf_counter() - t0 < deadline_s:
        seen.append(await client.zcard(index))
        if len(seen) > 3 and seen[-1] == seen[-4]:
            return seen[-1]
        await asyncio.sleep(every_s)  # allowed: a bench waits on the projector's passes
    raise TimeoutError(f"the projector went on moving archived runs' rows for {deadline_s} s")


async def cold_reads(client: aioredis.Redis, store: EventStore, root: Path) -> None:
    """Reads of archived runs, their rows in Parquet: each one's time against one ``HGET`` of
    a row still in Valkey (the baseline, timed here)."""
    statuses = cast(bytes, await client.get(keys.projection_active("run_status"))).decode()
    rows = keys.projection_rows("run_status", statuses, "run")
    warm = cast(list[bytes], await client.hkeys(rows))
    archived = [run.removeprefix("run:") for run in await asyncio.to_thread(_retired, root, 3)]
    if not warm or not archived:
        return
    baseline = await _best_ms(lambda: client.hget(rows, warm[0]))
    reads = {
        "get_run (an archived run, by id)": lambda: query.get_run(client, archived[0]),
        "list_runs (first page of 50)": lambda: query.list_runs(client, limit=50),
        "attempts_of (3 archived runs)": lambda: query.attempts_of(client, archived),
        "audit of an archived run": lambda: query.audit(client, run=archived[1]),
        "billing_report by user (every run)": lambda: query.billing_report(client, "user"),
        # The store's read of a retired history: the archive's index, then its segments.
        "history of an archived run (describe)": lambda: store.history(f"run:{archived[2]}"),
        "history of a run never seen": lambda: store.history(f"run:{'0' * 32}"),
    }
    print(f"reads of archived runs (one HGET of a live row: {baseline:.2f} ms):", flush=True)
    for what, read in reads.items():
        ms = await _best_ms(read, times=3)
        print(f"  {what:<38} {ms:9,.1f} ms  {ms / baseline:9,.0f}x", flush=True)


async def _best_ms(read: Callable[[], Awaitable[object]], times: int = 20) -> float:
    """The best of ``times`` runs of ``read``, in ms."""
    best = float("inf")
    for _ in range(times):
        t0 = time.perf_counter()
        await read()
        best = min(best, (time.perf_counter() - t0) * 1000)
    return best


async def soak(args: argparse.Namespace, server: ValkeyProcess, workdir: Path) -> int:
    settings = Settings(redis_url=server.url, idempotency_ttl_s=args.idempotency_ttl_s)
    store = EventStore(connect(server.url), settings)
    projector = await start_projector(
        server.url,
        workdir / "projector.log",
        projector_rest_s=str(args.rest_s),
        projector_cool_every_s=str(args.cool_every),
    )
    try:
        return await _soak(args, server, workdir, store, projector)
    finally:  # never a projector left behind: it would take a later server on the same port
        await stop(projector)
        await store.close()


async def _soak(
    args: argparse.Namespace,
    server: ValkeyProcess,
    workdir: Path,
    store: EventStore,
    projector: asyncio.subprocess.Process,
) -> int:
    client = store.redis
    await store.load_function()
    root = workdir / "event-archive"
    memory, rss = Gauge("valkey used_memory"), Gauge("projector RSS", unit=1024)
    totals = Totals()
    done = asyncio.Event()

    async def sample() -> None:
        while True:
            memory.add(await used_memory(client))
            rss.add(rss_kib(projector.pid))
            if totals.half_rss is None and totals.appended >= args.events // 2:
                totals.half_rss, totals.half_runs = rss.samples[-1], totals.runs
            if done.is_set():
                return
            await asyncio.sleep(1.0)

    async def watch_loop() -> None:
        """The event loop's longest stall: what the archiver's passes leave to the rest of a
        process that runs them (the log-collector's ingest, its lease)."""
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            totals.stall_s = max(totals.stall_s, time.perf_counter() - t - 0.01)

    async def archive_every() -> None:
        while not done.is_set():
            await asyncio.sleep(args.every)
            t0 = time.perf_counter()
            moved = await archive_older(client, root, older_than_s=args.retain_s, partitions=1)
            totals.add(moved, time.perf_counter() - t0)

    await asyncio.sleep(2.0)  # the projector up, its builds made
    print(
        f"soak: {args.events:,} events, retain {args.retain}, a pass every {args.every:g} s, "
        f"idempotency keys {args.idempotency_ttl_s} s, runs at rest in the projector "
        f"{args.rest_s:g} s, {args.batch} appends a round trip, "
        f"{args.lanes} in flight",
        flush=True,
    )
    sampler = asyncio.create_task(sample())
    watcher = asyncio.create_task(watch_loop())
    archiver: asyncio.Task[None] | None = None
    valkey_per_event = 0.0
    t0 = last_print = time.perf_counter()
    # One writer a lane, each lane's batches in order: the appends of several lanes in flight
    # together (each waits for its fsync), a run's in its order.
    queues: list[asyncio.Queue[Batch | None]] = [asyncio.Queue(2) for _ in range(args.lanes)]

    async def write(queue: asyncio.Queue[Batch | None]) -> None:
        while (batch := await queue.get()) is not None:
            await store.append_all(batch)
            totals.appended += len(batch)

    writers = [asyncio.create_task(write(queue)) for queue in queues]
    for lane, batch in batches(interleaved(args.events, seed=args.seed), args.batch, args.lanes):
        totals.runs += sum(isinstance(a.events[0], ev.RunSubmitted) for a in batch)
        await queues[lane].put(batch)
        if archiver is None and totals.appended >= args.calibrate:
            valkey_per_event = await calibrate(client, totals.appended)
            archiver = asyncio.create_task(archive_every())
        if time.perf_counter() - last_print >= 10:
            last_print = time.perf_counter()
            print(
                f"  {totals.appended:>12,} events  {totals.appended / (last_print - t0):7,.0f}/s"
                f"  archived {totals.archived:>12,}  runs retired {totals.retired:>9,}"
                f"  used_memory {memory.samples[-1] / MIB:7,.1f} MiB"
                f"  projector {rss.samples[-1] / 1024:6,.1f} MiB",
                flush=True,
            )
    for queue in queues:
        await queue.put(None)
    await asyncio.gather(*writers)
    append_s = time.perf_counter() - t0
    cpu = {
        "valkey": cpu_s(server.pid),
        "projector": cpu_s(projector.pid),
        "this process (writer, archiver)": time.process_time(),
    }
    caught_up_s = await wait_caught_up(client, projector)
    if archiver is None:
        valkey_per_event = await calibrate(client, totals.appended)
    else:
        archiver.cancel()
    # What is older than the retention once the writing stops: the last passes.
    await asyncio.sleep(args.retain_s)
    t1 = time.perf_counter()
    totals.add(
        await archive_older(client, root, older_than_s=args.retain_s, partitions=1),
        time.perf_counter() - t1,
    )
    t_cool = time.perf_counter()
    left = await wait_cooled(client, args.cool_every)
    cooled_s = time.perf_counter() - t_cool
    done.set()
    await sampler
    await watcher

    cold_rows = sum(p.stat().st_size for p in (root / ROWS).glob("*.parquet"))
    indexed = sum(p.stat().st_size for p in (root / INDEX).glob("*.parquet"))
    listed = Archive(root).manifest().segments
    parquet = sum((root / s.path).stat().st_size for s in listed)  # not the merged, still there
    in_archive = sum(s.events for s in listed)
    print(
        f"appended {totals.appended:,} events in {append_s:,.0f} s "
        f"({totals.appended / append_s:,.0f}/s); the projector caught up {caught_up_s:.1f} s "
        "after the last",
        flush=True,
    )
    print(
        "CPU while appending: "
        + ", ".join(f"{name} {seconds:,.0f} s" for name, seconds in cpu.items()),
        flush=True,
    )
    print(
        f"archived {in_archive:,} events in {totals.passes} passes "
        f"(median {statistics.median(totals.pass_s):.2f} s, longest {max(totals.pass_s):.2f} s);"
        f" {totals.retired:,} runs' streams retired; {await client.xlen(LOG):,} entries live;"
        f" the event loop's longest stall {totals.stall_s * 1000:,.0f} ms",
        flush=True,
    )
    print("memory:", flush=True)
    print(memory.line(), flush=True)
    print(rss.line(), flush=True)
    print("what the server holds at the end, by key family:", flush=True)
    held = await families(client)
    for family, count, size in held:
        print(f"  {family:<28} {count:>10,} keys {size / MIB:10,.1f} MiB", flush=True)
    projections = sum(size for family, _, size in held if family.startswith("projections"))
    grown = (rss.samples[-1] - rss.samples[0]) * 1024
    print(
        f"per run ({totals.runs:,} runs): {projections / totals.runs:,.0f} bytes of projection "
        f"rows in Valkey (the archived runs' rows left it within {cooled_s:.0f} s of the last "
        f"pass; {left:,} runs left: at work, or at rest in the projector's memory), "
        f"{cold_rows / totals.runs:,.0f} bytes of them in Parquet; "
        f"{grown / totals.runs:,.0f} bytes of the projector's RSS",
        flush=True,
    )
    if totals.half_rss is not None and totals.runs > totals.half_runs:
        later = (rss.samples[-1] - totals.half_rss) * 1024 / (totals.runs - totals.half_runs)
        print(
            f"the projector's RSS over the second half of the runs: "
            f"{totals.half_rss / 1024:,.1f} -> {rss.samples[-1] / 1024:,.1f} MiB, "
            f"{later:,.0f} bytes a run",
            flush=True,
        )
    days = len({s.path.partition("/")[0] for s in listed})
    print(
        f"the archive lists {len(listed):,} segments over {days} days, merged from "
        f"{sum(s.places for s in listed):,} as the passes wrote them",
        flush=True,
    )
    print(
        f"the archive's index of retired histories: {indexed / MIB:,.1f} MiB in "
        f"{len(RetiredIndex(root).manifest().files)} files, "
        f"{indexed / max(totals.retired, 1):,.0f} bytes a run retired",
        flush=True,
    )
    per_parquet = parquet / max(in_archive, 1)
    print(
        f"bytes per event: {valkey_per_event:,.0f} in Valkey (global entry + own stream), "
        f"{per_parquet:,.0f} in Parquet: {valkey_per_event / per_parquet:.1f}x smaller",
        flush=True,
    )
    await cold_reads(client, store, root)
    log_path = workdir / "projector.log"
    print("the projector started again on this history:", flush=True)
    for clean in (True, False):
        projector = await restarted(projector, server.url, log_path, args.rest_s, clean=clean)
        try:
            seconds, kib = await started(projector, log_path)
        finally:
            if not clean:
                await stop(projector)
        how = "after a clean stop (its memory)" if clean else "after kill -9 (from zero)"
        print(f"  {how:<34} {seconds:8.2f} s, RSS {kib / 1024:8.1f} MiB", flush=True)
    return 0


async def restarted(
    projector: asyncio.subprocess.Process, url: str, log_path: Path, rest_s: float, *, clean: bool
) -> asyncio.subprocess.Process:
    """The projector stopped (SIGTERM, or kill -9) and a new one started; the log marked."""
    if clean:
        await stop(projector)
    else:
        projector.kill()
        await projector.wait()
    with log_path.open("a") as out:
        out.write(_MARK + "\n")
    return await start_projector(url, log_path, projector_rest_s=str(rest_s))


_MARK = "--- bench.soak: restarted ---"


async def started(projector: asyncio.subprocess.Process, log_path: Path) -> tuple[float, int]:
    """Seconds from the new projector's first plan to its last build ready (its log's own
    times: a kill -9 leaves a lease to expire first, which is not the start's), and its RSS
    once settled."""
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        if projector.returncode is not None:
            raise RuntimeError(f"the projector exited with {projector.returncode}")
        text = await asyncio.to_thread(log_path.read_text)
        lines = text.rsplit(_MARK, 1)[-1].splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        plans = [e["timestamp"] for e in events if e.get("event") == "projection.plan"]
        ready = [e["timestamp"] for e in events if e.get("event") == "projection.ready"]
        if plans and len(ready) >= len(NAMES):
            seconds = (_when(ready[len(NAMES) - 1]) - _when(plans[0])).total_seconds()
            return seconds, await settled_rss_kib(projector.pid)
        await asyncio.sleep(0.2)  # allowed: a log file has no event; polled to a deadline
    raise TimeoutError("the projector did not start within an hour")


def _when(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


async def calibrate(client: aioredis.Redis, events: int) -> float:
    """Bytes per event in Valkey: the global stream and every history, over ``events``."""
    log_bytes = int(await client.memory_usage(LOG, samples=0) or 0)
    _, histories = await stream_bytes(client, keys.aggregate_stream(keys.ANY, 0))
    per_event = (log_bytes + histories) / events
    print(f"  calibrated over {events:,} events: {per_event:,.0f} bytes an event", flush=True)
    return per_event


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000, help="events to append")
    parser.add_argument("--retain", default="20s", help="RUNPLANE_RETAIN (a span: 20s, 1m)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between passes")
    parser.add_argument(
        "--cool-every", type=float, default=1.0, help="RUNPLANE_PROJECTOR_COOL_EVERY_S"
    )
    parser.add_argument("--batch", type=int, default=400, help="appends a round trip")
    parser.add_argument("--lanes", type=int, default=4, help="round trips in flight")
    parser.add_argument("--calibrate", type=int, default=100_000, help="events before passes")
    parser.add_argument("--idempotency-ttl-s", type=int, default=60)
    parser.add_argument(
        "--rest-s", type=float, default=2.0, help="RUNPLANE_PROJECTOR_REST_S (log time)"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        args.retain_s = duration_s(args.retain)
    except ValueError as exc:
        parser.error(f"--retain: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return on_a_server("soak", lambda server, workdir: soak(args, server, workdir))


if __name__ == "__main__":
    sys.exit(main())
