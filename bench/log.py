"""Throughput of the event log: ``EventStore.append`` and ``EventStore.replay`` against Redis.

Run ``python -m bench.log`` (1,000,000 events; several minutes) or ``python -m bench.log
--quick`` (100,000 events, fewer appends; the CI smoke). Every figure is a ratio against a
baseline measured in the same run, on the same server, through the same client:

- appends/s through ``EventStore.append`` (one ``RankExited`` per append, over 1000 runs)
  against plain ``XADD`` of the same encoded entry to the log stream, with 1 and 32 writers
  (asyncio tasks sharing the store's pool); goal: ratio >= 0.8 with 32 writers. The same with
  ``expected_version`` checked (each writer owns its runs, so nothing conflicts);
- replay events/s (``EventStore.replay``: read and decode) against raw ``XRANGE`` pages of the
  same size through the same client, not decoded; goals: ratio >= 0.85, 1M events in < 10 s;
- a breakdown of a replayed event's cost, and experiments (``bench.replay_variants``): page
  sizes, prefetching the next page, XRANGE without redis-py's reply callback, an inline
  fast-path decoder, and the cyclic GC (``gc.freeze``, events as ``gc=False`` structs).
  ``--profile`` adds cProfiles of append and replay.

The log is filled through ``EventStore.append`` itself (22-event run lifecycles, one append
each), so replay reads exactly what the store writes. By default the server is a fresh
``valkey-server`` (``appendonly yes``, ``appendfsync always``) in a temp dir; ``--redis-url``
uses an existing one, whose database must be empty (the benchmark writes and flushes it).
Each figure is the fastest of its rounds (``--rounds``, ``--replay-rounds``), subject and baseline
alternating. Other load on the machine skews every figure (the header and the "other load"
columns say how much), so the CPU ratio (client + server CPU per operation, baseline over
subject) is shown too: it is much less sensitive to it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import io
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from importlib.metadata import version

import msgspec
import redis.asyncio as aioredis
from redis._parsers.helpers import parse_stream_list
from redis.utils import HIREDIS_AVAILABLE

import services.core.reading as reads
from bench import replay_variants as rv
from bench import workload
from events import codec, keys
from events.model import AnyEvent, Event
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.core.valkey import ValkeyProcess

FULL_EVENTS = 1_000_000
QUICK_EVENTS = 100_000
APPEND_RUNS = 1000
FILL_WRITERS = 32
REPLAY_GOAL_S_PER_M = 10.0
APPEND_GOAL = 0.8
REPLAY_GOAL = 0.85

Work = Callable[[], Awaitable[int]]
Condition = Callable[[], AbstractContextManager[object]]

_parse_stream_list: Callable[..., object] = parse_stream_list  # untyped in redis-py


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Sample:
    ops: int
    seconds: float
    client_cpu: float
    server_cpu: float
    aof_bytes: int
    others: float  # CPUs other processes kept busy meanwhile (NaN if unknown)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    @property
    def cpu_per_op(self) -> float:
        """Client plus server CPU seconds per operation: what the work costs, whatever else
        runs on the machine (wall time is what the goals are about, but it suffers more)."""
        return (self.client_cpu + self.server_cpu) / self.ops


def _best(samples: list[Sample]) -> Sample:
    """The fastest round: the one other load on the machine disturbed least."""
    return max(samples, key=lambda s: s.rate)


@dataclass
class Figure:
    name: str
    baseline_name: str
    goal: float | None = None  # the least ratio that passes; None: for information
    group: str = ""
    subject: list[Sample] = field(default_factory=list)
    baseline: list[Sample] = field(default_factory=list)

    @property
    def value(self) -> float:
        return _best(self.subject).rate

    @property
    def base(self) -> float:
        return _best(self.baseline).rate

    @property
    def ratio(self) -> float:
        return self.value / self.base

    @property
    def cpu_ratio(self) -> float:
        """Baseline over subject CPU per operation (medians of the rounds)."""
        subject = statistics.median(s.cpu_per_op for s in self.subject)
        return statistics.median(s.cpu_per_op for s in self.baseline) / subject


class Bench:
    def __init__(self, store: EventStore, args: argparse.Namespace) -> None:
        self.store = store
        self.client = store.redis
        self.args = args
        self.figures: list[Figure] = []
        self.replay_figure: Figure | None = None
        self.profiles: list[tuple[str, str]] = []
        self.heap_objects = 0
        self.failed_experiments: dict[str, str] = {}

    async def server_counters(self) -> tuple[float, int]:
        """The server's CPU seconds so far and its AOF size (0 without AOF)."""
        cpu = await self.client.info("cpu")
        persistence = await self.client.info("persistence")
        seconds = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return seconds, int(persistence.get("aof_current_size", 0))

    async def quiet(self) -> None:
        """Wait until no AOF rewrite runs or is scheduled (it forks and competes for CPU)."""
        while True:
            info = await self.client.info("persistence")
            if not int(info.get("aof_rewrite_in_progress", 0)) and not int(
                info.get("aof_rewrite_scheduled", 0)
            ):
                return
            await asyncio.sleep(0.1)

    async def measure(self, ops: int, work: Work) -> Sample:
        """Run ``work`` once, timed; it returns how many operations it did (checked)."""
        await self.quiet()
        return await timed(ops, work, self.server_counters)

    async def pair(
        self, figure: Figure, ops: int, subject: Work, baseline: Work, round_: int
    ) -> None:
        order = [(figure.subject, subject), (figure.baseline, baseline)]
        for samples, work in order[:: -1 if round_ % 2 else 1]:
            samples.append(await self.measure(ops, work))

    # --- appends ---------------------------------------------------------------------------

    async def appends(self) -> None:
        args = self.args
        log = keys.log_stream(0)
        await self.store.load_function()
        # warm up: the pool's connections, the function, the server's and the disk's caches
        warm = workload.appends(10 * args.writers, APPEND_RUNS)
        await append_store(self.store, warm, args.writers, checked=False)
        await append_xadd(self.client, log, [codec.encode(e) for e in warm], args.writers)
        await self.client.flushdb()
        cases = [
            (1, args.seq_appends, False),
            (args.writers, args.appends, False),
            (1, args.seq_appends, True),
            (args.writers, args.appends, True),
        ]
        for writers, count, checked in cases:
            label = f"{writers} writer{'s' if writers > 1 else ''}"
            figure = Figure(
                name=f"append/s, {label}, expected_version={'checked' if checked else 'None'}",
                baseline_name=f"XADD, {label}",
                goal=APPEND_GOAL if writers > 1 and not checked else None,
                group="append",
            )
            for round_ in range(args.rounds):
                if checked:
                    events = _owned_appends(count, writers)
                else:
                    events = workload.appends(count, APPEND_RUNS)
                fields = [codec.encode(event) for event in events]
                subject = functools.partial(
                    append_store, self.store, events, writers, checked=checked
                )
                baseline = functools.partial(append_xadd, self.client, log, fields, writers)
                await self.pair(figure, count, subject, baseline, round_)
            self.figures.append(figure)
            _progress(figure)
        if args.profile:
            events = workload.appends(args.appends, APPEND_RUNS)
            text = await _profiled(append_store(self.store, events, args.writers, checked=False))
            self.profiles.append((f"EventStore.append, {args.writers} writers", text))

    # --- replay ----------------------------------------------------------------------------

    async def fill(self, total: int) -> None:
        """``total`` events into the log through ``EventStore.append``: whole run lifecycles
        (22 events, one append each) from 32 writers. What the store writes; not timed."""
        t0 = time.perf_counter()
        runs = iter(range(total // workload.EVENTS_PER_RUN + 1))
        left = [total]

        async def writer() -> None:
            for run_index in runs:
                take = min(left[0], workload.EVENTS_PER_RUN)
                if take <= 0:
                    return
                left[0] -= take
                events = workload.run_lifecycle(run_index)[:take]
                await self.store.append(events, expected_version=None)

        await asyncio.gather(*(writer() for _ in range(FILL_WRITERS)))
        length = await self.client.xlen(keys.log_stream(0))
        if length != total:
            raise AssertionError(f"the log holds {length:,} entries, not {total:,}")
        memory = (await self.client.info("memory"))["used_memory_human"]
        print(
            f"  filled {total:,} events in {time.perf_counter() - t0:.1f}s "
            f"(server memory {memory})",
            flush=True,
        )

    async def replay(self) -> None:
        page = reads._PAGE
        raw = rv.fetcher(self.client, keys.log_stream(0), page)
        figure = Figure(
            name=f"replay events/s (read + decode), page {page:,}",
            baseline_name=f"raw XRANGE, page {page:,}",
            goal=REPLAY_GOAL,
            group="replay",
        )

        async def subject() -> int:
            return await rv.consume(self.store.replay())

        async def baseline() -> int:
            return await rv.count_raw(raw, page)

        for round_ in range(self.args.replay_rounds):
            await self.pair(figure, self.args.events, subject, baseline, round_)
        self.figures.append(figure)
        self.replay_figure = figure
        _progress(figure)
        if self.args.profile:
            text = await _profiled(rv.consume(self.store.replay()))
            self.profiles.append(("EventStore.replay", text))

    async def experiments(self) -> None:
        """Replay variants (``bench.replay_variants``), each against raw XRANGE, same page."""
        stream = keys.log_stream(0)
        raw_client = rv.raw_client(self.client)
        p = reads._PAGE
        untracked = rv.Untracked()

        def fetch(page: int, *, callback: bool = True) -> rv.Fetch:
            return rv.fetcher(self.client if callback else raw_client, stream, page)

        def store_replay(page: int = p, condition: Condition = nullcontext) -> Work:
            async def run() -> int:
                with rv.store_page(page), condition():
                    return await rv.consume(self.store.replay())

            return run

        def variant(
            page: int,
            *,
            prefetch: bool = False,
            callback: bool = False,
            decode: rv.Decode | None = None,
            condition: Condition = nullcontext,
        ) -> Work:
            replay = rv.replay_prefetch if prefetch else rv.replay_sequential
            if decode is None:
                decode = rv.decode_dict_entries if callback else rv.decode_list_entries

            async def run() -> int:
                with condition():
                    return await rv.consume(replay(fetch(page, callback=callback), page, decode))

            return run

        def raw(page: int = p, condition: Condition = nullcontext) -> Work:
            async def run() -> int:
                with condition():
                    return await rv.count_raw(fetch(page), page)

            return run

        async def raw_no_callback() -> int:
            return await rv.count_raw(fetch(p, callback=False), p)

        v = variant
        variants: list[tuple[str, int, Work]] = [
            *(
                (f"store.replay, page {n:,}", n, store_replay(n))
                for n in (1000, 5000, 25_000, 50_000)
            ),
            (f"[raw XRANGE w/o redis-py callback, page {p:,}]", p, raw_no_callback),
            (f"bench copy of store.replay, page {p:,}", p, v(p, callback=True)),
            (f"A: no callback, page {p:,}", p, v(p)),
            (f"B: A + prefetch next page, page {p:,}", p, v(p, prefetch=True)),
            ("store.replay, gc.freeze() first", p, store_replay(condition=rv.frozen_heap)),
            ("[raw XRANGE, gc.freeze() first]", p, raw(condition=rv.frozen_heap)),
            ("store.replay, GC disabled (bound)", p, store_replay(condition=rv.gc_disabled)),
            ("[raw XRANGE, GC disabled]", p, raw(condition=rv.gc_disabled)),
        ]
        sample_page = await fetch(p, callback=False)("-")
        reference = list(rv.decode_list_entries(sample_page))
        fast = rv.fast_path_decoder()
        if fast is not None and not rv.same_records(list(fast(sample_page)), reference):
            print("  fast-path decode differs from the store's records: skipped", flush=True)
            fast = None
        if fast is not None:
            variants += [
                (f"C: A + fast-path decode, page {p:,}", p, v(p, decode=fast)),
                ("C: A + fast-path decode, page 1,000", 1000, v(1000, decode=fast)),
                (f"D: C + prefetch, page {p:,}", p, v(p, prefetch=True, decode=fast)),
                (
                    f"E: C + gc.freeze() first, page {p:,}",
                    p,
                    v(p, decode=fast, condition=rv.frozen_heap),
                ),
            ]
        variants.append(
            ("store.replay, events gc=False", p, store_replay(condition=untracked.installed))
        )
        fast_untracked = rv.fast_path_decoder(untracked)
        if fast_untracked is not None and not rv.same_records(
            list(fast_untracked(sample_page)), reference
        ):
            print("  fast-path decode (gc=False) differs from the store's: skipped", flush=True)
            fast_untracked = None
        if fast_untracked is not None:
            variants.append((f"F: C + events gc=False, page {p:,}", p, v(p, decode=fast_untracked)))
        baselines: dict[int, list[Sample]] = {}
        results: dict[str, list[Sample]] = {}
        failed: dict[str, str] = {}
        for round_ in range(self.args.experiment_rounds):
            for page in sorted({page for _, page, _ in variants}):
                baselines.setdefault(page, []).append(
                    await self.measure(self.args.events, raw(page))
                )
            for name, _, work in variants[:: -1 if round_ % 2 else 1]:
                if name in failed:
                    continue
                try:
                    sample = await self.measure(self.args.events, work)
                except Exception as exc:  # noqa: BLE001 - an experiment broken by a change
                    # in services/ or events/ is reported, and the others still run
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    print(f"  {name}: FAILED ({failed[name]})", flush=True)
                    continue
                results.setdefault(name, []).append(sample)
        self.failed_experiments = failed
        for name, page, _ in variants:
            if name in failed:
                continue
            figure = Figure(
                name=name,
                baseline_name=f"raw XRANGE, page {page:,}",
                goal=REPLAY_GOAL,
                group="experiment",
                subject=results[name],
                baseline=baselines[page],
            )
            self.figures.append(figure)
            _progress(figure)

    async def breakdown(self) -> list[tuple[str, float]]:
        """Where a replayed event's time goes, in µs: each piece alone, on one page."""
        page = reads._PAGE
        stream = keys.log_stream(0)
        raw_client = rv.raw_client(self.client)
        with_callback = await rv.fetcher(self.client, stream, page)("-")
        without = await rv.fetcher(raw_client, stream, page)("-")
        n = len(with_callback)
        bodies = [fields[codec.BODY] for _, fields in with_callback]
        decoder = msgspec.json.Decoder(AnyEvent)
        untracked = rv.Untracked().decoder

        async def best(fn: Callable[[], Awaitable[object]], *, gc_on: bool = True) -> float:
            fastest = float("inf")
            for _ in range(5):
                gc.collect()
                with nullcontext() if gc_on else rv.gc_disabled():
                    t0 = time.perf_counter()
                    await fn()
                    fastest = min(fastest, time.perf_counter() - t0)
            return fastest / n * 1e6

        def sync(fn: Callable[[], object]) -> Callable[[], Awaitable[object]]:
            async def run() -> object:
                return fn()

            return run

        async def async_steps() -> int:
            async def gen() -> AsyncIterator[object]:
                for item in with_callback:
                    yield item

            return sum([1 async for _ in gen()])

        fetch_cb = rv.fetcher(self.client, stream, page)
        fetch_raw = rv.fetcher(raw_client, stream, page)
        rows = [
            (
                "XRANGE page: round trip + hiredis + redis-py callback",
                await best(lambda: fetch_cb("-")),
            ),
            ("  the same, GC disabled", await best(lambda: fetch_cb("-"), gc_on=False)),
            ("XRANGE page: round trip + hiredis, no callback", await best(lambda: fetch_raw("-"))),
            (
                "redis-py callback alone (tuple + dict per entry)",
                await best(sync(lambda: _parse_stream_list(without))),
            ),
            (
                "store per-entry decode (_recorded), kept as a list",
                await best(sync(lambda: list(rv.decode_dict_entries(with_callback)))),
            ),
            (
                "  the same, GC disabled",
                await best(sync(lambda: list(rv.decode_dict_entries(with_callback))), gc_on=False),
            ),
            (
                "  of which msgspec Decoder(AnyEvent).decode",
                await best(sync(lambda: [decoder.decode(body) for body in bodies])),
            ),
        ]
        rows.append(
            (
                "  msgspec decode, events gc=False",
                await best(sync(lambda: [untracked.decode(body) for body in bodies])),
            )
        )
        if (fast := rv.fast_path_decoder()) is not None:
            fast_ = fast
            rows.append(
                (
                    "fast-path decode of callback-free entries (bench), as a list",
                    await best(sync(lambda: list(fast_(without)))),
                )
            )
        rows.append(("async generator step (async for), per event", await best(async_steps)))

        async def store_replay() -> int:
            return await rv.consume(self.store.replay())

        async def raw_replay() -> int:
            return await rv.count_raw(fetch_cb, page)

        for label, work in (("store.replay", store_replay), ("raw XRANGE", raw_replay)):
            gc.collect()
            with rv.GcAccount() as account:
                t0 = time.perf_counter()
                total = await work()
                wall = time.perf_counter() - t0
            gen0, gen1, gen2 = account.collections
            share = account.seconds / wall
            name = f"cyclic GC in a whole {label} ({share:.0%} of its {wall:.2f}s;"
            name += f" collections gen0/1/2 {gen0}/{gen1}/{gen2})"
            rows.append((name, account.seconds / total * 1e6))
        self.heap_objects = len(gc.get_objects())
        return rows


def _progress(figure: Figure) -> None:
    print(
        f"  {figure.name}: {figure.value:,.0f}/s vs {figure.base:,.0f}/s ({figure.ratio:.2f})",
        flush=True,
    )


async def timed(
    ops: int, work: Work, server_counters: Callable[[], Awaitable[tuple[float, int]]]
) -> Sample:
    """Run ``work`` once, timed: this process's CPU, the server's (``server_counters``: its
    CPU seconds and AOF bytes so far) and the machine's other load meanwhile; ``work`` returns
    how many operations it did (checked against ``ops``)."""
    gc.collect()
    server0, aof0 = await server_counters()
    busy0 = machine_cpu_seconds()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    done = await work()
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    busy = machine_cpu_seconds() - busy0
    server, aof = await server_counters()
    if done != ops:
        raise AssertionError(f"expected {ops:,} operations, counted {done:,}")
    server -= server0
    others = max(busy - cpu - server, 0.0) / seconds
    return Sample(ops, seconds, cpu, server, aof - aof0, others)


async def _profiled(work: Awaitable[int]) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    await work
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
    text = out.getvalue()
    return text[text.find("   ncalls") :].rstrip()


def _owned_appends(count: int, writers: int) -> list[Event]:
    """Appends that writer ``w`` (taking every ``writers``-th, from ``w``) can version-check
    without races: each writer has its own new runs, ~1000 runs in all."""
    per_writer = max(APPEND_RUNS // writers, 1)
    run_ids = [[workload.new_id() for _ in range(per_writer)] for _ in range(writers)]
    return [
        workload.rank_exited(run_ids[i % writers][(i // writers) % per_writer], rank=i % 8)
        for i in range(count)
    ]


async def append_store(
    store: EventStore, events: Sequence[Event], writers: int, *, checked: bool
) -> int:
    async def writer(mine: Sequence[Event]) -> int:
        versions: dict[str, int] = {}
        for event in mine:
            if checked:
                expected = versions.get(event.aggregate, 0)
                appended = await store.append([event], expected_version=expected)
                versions[event.aggregate] = expected + 1
                if appended.version != expected + 1:
                    raise AssertionError(f"{event.aggregate}: version {appended.version}")
            else:
                await store.append([event], expected_version=None)
        return len(mine)

    return sum(await asyncio.gather(*(writer(events[w::writers]) for w in range(writers))))


async def append_xadd(
    client: aioredis.Redis, stream: str, entries: Sequence[workload.Fields], writers: int
) -> int:
    async def writer(mine: Sequence[workload.Fields]) -> int:
        for fields in mine:
            await client.xadd(stream, fields)  # type: ignore[arg-type]
        return len(mine)

    return sum(await asyncio.gather(*(writer(entries[w::writers]) for w in range(writers))))


# --- reporting ---------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]], header: Sequence[str], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = (
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        )
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def figure_rows(bench: Bench) -> tuple[list[list[str]], bool]:
    rows: list[list[str]] = []
    ok = True
    for figure in bench.figures:
        if figure.group == "experiment":
            continue
        verdict, goal = "info", "-"
        if figure.goal is not None:
            passed = figure.ratio >= figure.goal
            ok &= passed
            verdict, goal = ("PASS" if passed else "FAIL"), f">= {figure.goal:.2f}"
        rows.append(
            [
                figure.name,
                f"{figure.value:,.0f}",
                f"{figure.base:,.0f} ({figure.baseline_name})",
                f"{figure.ratio:.2f}",
                goal,
                verdict,
                f"{figure.cpu_ratio:.2f}",
            ]
        )
    replay = bench.replay_figure
    if replay is not None:
        total = bench.args.events
        seconds = _best(replay.subject).seconds
        base_seconds = _best(replay.baseline).seconds
        limit = REPLAY_GOAL_S_PER_M * total / FULL_EVENTS
        passed = seconds < limit
        ok &= passed
        rows.append(
            [
                f"replay of {total:,} events, wall time",
                f"{seconds:.2f} s",
                f"{base_seconds:.2f} s (raw XRANGE)",
                f"{base_seconds / seconds:.2f}",
                f"< {limit:g} s",
                "PASS" if passed else "FAIL",
                f"{replay.cpu_ratio:.2f}",
            ]
        )
    return rows, ok


def detail_rows(bench: Bench) -> list[list[str]]:
    rows: list[list[str]] = []
    for figure in bench.figures:
        if figure.group == "experiment":
            continue
        for label, samples in (
            (figure.name, figure.subject),
            (figure.baseline_name, figure.baseline),
        ):
            s = _best(samples)
            rows.append(
                [
                    label,
                    f"{s.ops:,}",
                    f"{s.seconds:.2f}",
                    f"{s.rate:,.0f}",
                    f"{s.client_cpu / s.ops * 1e6:.1f}",
                    f"{s.server_cpu / s.ops * 1e6:.1f}",
                    f"{s.client_cpu / s.seconds:.0%}",
                    f"{s.aof_bytes / s.ops:,.0f}" if s.aof_bytes >= 0 else "rewrite",
                    f"{s.others:.2f}",
                ]
            )
    return rows


def experiment_rows(bench: Bench) -> list[list[str]]:
    assert bench.replay_figure is not None
    store_rate = bench.replay_figure.value
    rows = []
    for figure in bench.figures:
        if figure.group != "experiment":
            continue
        fast = figure.value * REPLAY_GOAL_S_PER_M >= FULL_EVENTS
        rows.append(
            [
                figure.name,
                f"{figure.value:,.0f}",
                f"{figure.base:,.0f}",
                f"{figure.ratio:.2f}",
                f"{figure.value / store_rate:.2f}x",
                "yes" if figure.ratio >= REPLAY_GOAL and fast else "no",
                f"{figure.cpu_ratio:.2f}",
                f"{_best(figure.subject).others:.2f}",
            ]
        )
    return rows


# --- main --------------------------------------------------------------------------------


async def server_banner(client: aioredis.Redis) -> str:
    info = await client.info("server")
    name = info.get("server_name", "redis")
    server = f"{name} {info.get('valkey_version', info['redis_version'])}"
    try:
        config = await client.config_get("appendonly")
        config |= await client.config_get("appendfsync")
        durability = f"appendonly {config['appendonly']}, appendfsync {config['appendfsync']}"
    except aioredis.RedisError:
        durability = "durability unknown: CONFIG GET refused"
    return f"{server} ({durability})"


async def run(args: argparse.Namespace, url: str) -> int:
    client = connect(url, max_connections=max(64, args.writers * 2))
    store = EventStore(client, Settings(redis_url=url))
    bench = Bench(store, args)
    try:
        if await client.dbsize():
            print(f"error: the database at {url} is not empty; the benchmark writes and flushes it")
            return 2
        print(
            f"runplane log benchmark: python {platform.python_version()}, "
            f"redis-py {version('redis')}, "
            f"hiredis {'IN USE' if HIREDIS_AVAILABLE else 'NOT in use'} "
            f"(redis.utils.HIREDIS_AVAILABLE={HIREDIS_AVAILABLE}), "
            f"msgspec {msgspec.__version__}"
        )
        print(f"machine: {os.cpu_count()} CPUs, shared by client and server; {machine_busy()}")
        print(f"server: {await server_banner(client)} at {url}")
        print(
            f"appends per round: {args.seq_appends:,} with 1 writer, {args.appends:,} with "
            f"{args.writers}; replay: {args.events:,} events; best of {args.rounds} rounds "
            f"(replay {args.replay_rounds}, experiments {args.experiment_rounds})",
            flush=True,
        )
        print("appends ...", flush=True)
        await bench.appends()
        await client.flushdb()
        print("replay ...", flush=True)
        await bench.fill(args.events)
        await bench.replay()
        breakdown = await bench.breakdown()
        if not args.no_experiments:
            print("experiments ...", flush=True)
            await bench.experiments()
        await client.flushdb()
    finally:
        await store.close()

    rows, ok = figure_rows(bench)
    header = ["figure", "value", "baseline", "ratio", "goal", "result", "CPU ratio"]
    print()
    print(table(rows, header, {1, 3, 6}))
    print(
        "value/baseline: the fastest of the rounds (least disturbed by other load), per second; "
        "ratio: value / baseline;\nCPU ratio: baseline's client+server CPU per operation over "
        "the subject's (medians): the cost ratio, robust to other load"
    )
    print()
    print(
        "details: the fastest round of each measurement; CPU time per operation; other load: "
        "CPUs busy with other processes meanwhile"
    )
    print(
        table(
            detail_rows(bench),
            [
                "measurement",
                "ops",
                "wall s",
                "ops/s",
                "client µs/op",
                "server µs/op",
                "client busy",
                "AOF B/op",
                "other load",
            ],
            {1, 2, 3, 4, 5, 6, 7, 8},
        )
    )
    print()
    print(f"replay breakdown: µs per event, best of 5, one page of {reads._PAGE:,} entries")
    print(table([[name, f"{us:.2f}"] for name, us in breakdown], ["piece", "µs/event"], {1}))
    print(
        f"(objects tracked by the GC in this process, between measurements: {bench.heap_objects:,})"
    )
    if not args.no_experiments:
        print()
        print(
            "replay experiments (bench/replay_variants.py): events/s vs raw XRANGE at the same "
            "page size; [brackets]: other baselines"
        )
        print(
            table(
                experiment_rows(bench),
                [
                    "variant",
                    "events/s",
                    "raw XRANGE",
                    "ratio",
                    "vs store",
                    "meets goals",
                    "CPU ratio",
                    "other load",
                ],
                {1, 2, 3, 4, 6, 7},
            )
        )
    for name, why in bench.failed_experiments.items():
        print(f"experiment {name!r} failed: {why}")
    for title, text in bench.profiles:
        print()
        print(f"cProfile of {title}, top 20 by own time")
        print(text)
    return 0 if ok or not args.strict else 1


def machine_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (Linux ``/proc/stat``), or NaN."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:8]]
    except (OSError, ValueError):
        return math.nan
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def machine_busy(seconds: float = 1.0) -> str:
    """How busy all CPUs were over ``seconds`` before the benchmark (Linux), as text."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return "unknown"
    busy = 1 - (idle1 - idle0) / max(total1 - total0, 1)
    return f"{busy:.0%} busy before the start (other load skews every figure)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.log", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, help=f"events to replay (default {FULL_EVENTS:,})")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 100k events, fewer appends")
    parser.add_argument("--redis-url", help="use this server (its database must be empty)")
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers (default 32)")
    parser.add_argument("--appends", type=int, help="appends per round with --writers writers")
    parser.add_argument("--seq-appends", type=int, help="appends per round with one writer")
    parser.add_argument("--rounds", type=int, help="rounds per append figure (fastest shown)")
    parser.add_argument("--replay-rounds", type=int, help="rounds of the replay figure")
    parser.add_argument("--experiment-rounds", type=int, help="rounds per replay experiment")
    parser.add_argument("--no-experiments", action="store_true", help="skip replay experiments")
    parser.add_argument("--profile", action="store_true", help="print cProfiles")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events or (QUICK_EVENTS if quick else FULL_EVENTS)
    args.appends = args.appends or (3000 if quick else 10_000)
    args.seq_appends = args.seq_appends or (500 if quick else 1500)
    args.rounds = args.rounds or (2 if quick else 5)
    args.replay_rounds = args.replay_rounds or (2 if quick else 3)
    args.experiment_rounds = args.experiment_rounds or (1 if quick else 3)
    counts = (args.events, args.appends, args.seq_appends, args.writers)
    if min(*counts, args.rounds, args.replay_rounds, args.experiment_rounds) < 1:
        parser.error("counts must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.redis_url:
        return asyncio.run(run(args, args.redis_url))
    with (
        tempfile.TemporaryDirectory(prefix="runplane-bench-") as data_dir,
        ValkeyProcess(data_dir) as server,
    ):
        return asyncio.run(run(args, server.url))


if __name__ == "__main__":
    sys.exit(main())
