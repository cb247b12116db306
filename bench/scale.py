"""The scheduler at scale: 5,000 simulated nodes x 8 GPUs and 50,000 runs, on a real server.

``python -m bench.scale [--nodes N] [--gpus G] [--runs R] [--runtime-s S]`` starts a private
``valkey-server`` (AOF on, ``appendfsync always``) in a temp dir, or uses ``--redis-url`` (an
empty database), then:

1. baselines, in the same run: ``XADD`` of an encoded event by 32 writers on the same server
   (entries/s), the server's CPU per node told of an append (below), and the scheduler's
   pure ``decide`` in this process on the same workload and sizes (placements per second of
   decide time in steady state, as ``bench.placement``);
2. a fleet of N node-agents (``bench.fleet``: the real agent's fold, plan and reporter over a
   simulated executor) registers its nodes and keeps their heartbeat keys;
3. the real scheduler starts as its own process, ``python -m services.scheduler``, as ``mcli
   dev up`` starts it (default settings: 500 ms tick, 5 s lease, 10 s node timeout);
4. R runs are submitted at once by 32 concurrent users through the mcli client
   (``cli.client.Client.submit``): ``bench.placement``'s mix of 1 to 32 GPUs (up to 4 nodes),
   priorities auto/low/lowest, a fifth preemptible, so some attempts are preempted and
   retried;
5. each rank pulls, runs for ``--runtime-s`` (+-50 %) and exits 0; the run waits until every
   run's latest attempt has ended;
6. the whole log is replayed and checked: every run's events fold under the lifecycle rules,
   every run COMPLETED, no GPU held by two attempts at once (from the placements of
   ``attempt.scheduled`` and the attempts' ends), no node lost.

Figures come from the log's own timestamps (the server's clock, one for every writer):
end-to-end events/s (every run event, from the first submission to the last completion) as a
ratio to raw XADD; placements/s (``attempt.scheduled``: one gang placement decision each) over
the span in which placements happened, with the busiest second, as a ratio to the pure decide;
the scheduler's own events/s; queue wait and placement -> RUNNING latencies, the latter split
into the agents' part and the scheduler's reaction; CPU seconds of each process, and the
scheduler's per run (it is one thread: on a machine where everything is busy, that is the
figure that says what it would do alone). ``--profile FILE`` runs the scheduler under cProfile.

Then the agents' server cost, which the simulation leaves half out: every append already copies
its event into the inboxes of the nodes concerned (``events.inbox``), so the copies are in the
server's CPU above, but the simulated agents are fed from one reader of the global log
(``bench.fleet``), not each through its group on its inbox. So two costs are measured on this
server: what an append pays per node told (``EventStore.append`` of a run event whose run has
``COPY_TOLD`` told nodes against one with none, baseline step 1) and one inbox delivery
(XREADGROUP + XACK in batches of 100, as ``LogConsumer`` reads, through a new group on each
inbox the run left). The server's cost per run is then (inbox copies per run) x (copy +
delivery): what each run's own nodes are told, the same whatever the fleet's size. Beside it,
the model it replaces, each agent reading the whole log (a delivery measured the same way on
the global log, x events per run x agents), at this fleet and at the default one.

The bench checks what it measures: it exits 1 unless every run COMPLETED by the rules, with
no GPU double-booked and no node lost (heartbeat keys live 30 s here, not the agents' 10 s: a
simulation process starved of CPU must not make nodes look dead).

Why the scheduler is a process and not ``services.scheduler.app`` in this one: the edge is what
is measured (FastStream consumer group in batches, lease and fencing, concurrent appends, the
server's clock), and the simulated agents and users would share its event loop and its GIL, so
their work would show up as the scheduler's latency and its CPU could not be told apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import pstats
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from bench import placement, workload
from bench.fleet import Fleet, SharedStore
from bench.log import append_xadd
from bench.processes import cpu_s, stop
from events import codec, keys
from events import model as ev
from events.access import Principal
from events.codec import Recorded
from events.errors import IllegalTransition
from events.lifecycle import RunState, evolve
from events.spec import RunSpec
from events.status import RunStatus
from services.api.runs import RunRequests
from services.core.aio import wait_event
from services.core.client import connect
from services.core.logging import configure
from services.core.settings import Settings
from services.core.store import EventStore
from services.core.valkey import ValkeyProcess

ROOT = Path(__file__).resolve().parents[1]
SCHEDULER = "scheduler@bench"
WRITERS = 32  # baseline XADD writers, as bench.log's
USERS = 32  # concurrent submitters
FANOUT_BATCH = 100  # LogConsumer's batch
COPY_TOLD = 4  # told nodes of the copy baseline's run: the most nodes a bench run has
COPY_ROUNDS = 4  # the copy baseline alternates runs with and without told nodes this often
POOL = 128  # connections of the fleet's store; all but 32 for the agents' reads and appends
Gpu = tuple[str, int]
Attempt = tuple[str, int]


@dataclass(frozen=True)
class Config:
    nodes: int = 5_000
    gpus: int = 8
    runs: int = 50_000
    runtime_s: float = 1.0
    seed: int = 7
    baseline_entries: int = 20_000
    pure_rounds: int = 20
    fanout_sample: int = 20_000
    copy_sample: int = 4_000  # appends of each kind (with and without told nodes)
    heartbeat_ttl_s: float = 30.0
    timeout_s: float = 3_600.0
    #: Run the scheduler under cProfile, keep its stats in this file and print a summary.
    profile: Path | None = None

    def problem(self) -> str | None:
        """Why this workload could never complete on these nodes, if it could not."""
        for size in placement.SIZES:
            if size > self.gpus and size % self.gpus:
                return f"--gpus {self.gpus}: runs of {size} GPUs would not fit whole nodes"
            if -(-size // self.gpus) > self.nodes:
                return f"--nodes {self.nodes}: runs of {size} GPUs need more nodes"
        return None


@dataclass
class Report:
    config: Config
    # baselines
    xadd_per_s: float = 0.0
    pure_placements_per_s: float = 0.0
    pure_first_pass_per_s: float = 0.0
    # outcome
    statuses: dict[str, int] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    double_booked: list[tuple[Gpu, Attempt, Attempt]] = field(default_factory=list)
    nodes_lost: int = 0
    attempts: int = 0
    retries: int = 0
    preempted: int = 0
    # figures from the log's timestamps
    run_events: int = 0
    span_s: float = 0.0
    placements: int = 0
    placement_span_s: float = 0.0
    peak_placements_1s: int = 0
    scheduler_events: int = 0
    queue_wait_ms: list[int] = field(default_factory=list)
    to_running_ms: list[int] = field(default_factory=list)
    #: placed -> the attempt's last rank.running: the agents' part of ``to_running_ms``
    agents_running_ms: list[int] = field(default_factory=list)
    #: the last rank.running -> attempt.running (0 where the last rank's report carried it,
    #: as an agent's does), the last rank.exited -> the attempt's end: how long it takes to
    #: see a change and write what it means
    scheduler_running_ms: list[int] = field(default_factory=list)
    scheduler_end_ms: list[int] = field(default_factory=list)
    # the processes
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    scheduler_terms: int = 0
    #: server CPU us: one entry of the global log delivered to one more group (each agent
    #: reading the whole log, the model before the inboxes)
    fanout_us_per_delivery: float | None = None
    #: server CPU us: an append of one run event, and what each node told adds to it
    append_us: float = 0.0
    copy_us_per_node: float = 0.0
    #: server CPU us: one inbox entry delivered to its node's group
    inbox_us_per_delivery: float | None = None
    inboxes: int = 0
    inbox_copies: int = 0  # every copy the appends made into the inboxes during the run
    scheduler_profile: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.run_events / self.span_s if self.span_s else 0.0

    @property
    def placements_per_s(self) -> float:
        return self.placements / self.placement_span_s if self.placement_span_s else 0.0

    @property
    def completed(self) -> int:
        return self.statuses.get(RunStatus.COMPLETED.value, 0)


# --- the run -------------------------------------------------------------------------------


async def run(config: Config, redis_url: str | None = None) -> Report:
    """Everything above; the report is printed as it goes and returned."""
    if (problem := config.problem()) is not None:
        raise ValueError(problem)
    with tempfile.TemporaryDirectory(prefix="runplane-scale-") as tmp:
        if redis_url is not None:
            return await _run(config, redis_url, Path(tmp))
        with ValkeyProcess(Path(tmp) / "valkey") as server:
            return await _run(config, server.url, Path(tmp))


async def _run(config: Config, url: str, tmp: Path) -> Report:
    report = Report(config)
    settings = Settings(redis_url=url, partitions=1)
    store = SharedStore(connect(url, max_connections=POOL), settings, limit=POOL - 32)
    try:
        if await store.redis.dbsize():
            raise ValueError(f"the database at {url} is not empty: the bench writes and flushes it")
        _say(
            f"scale: {config.nodes:,} nodes x {config.gpus} GPUs, {config.runs:,} runs "
            f"(GPUs per run from {placement.SIZES}), runtime {config.runtime_s:g} s +-50 %"
        )
        await _baselines(config, store, report)
        await _serve(config, url, store, tmp, report)
        await _analyse(store, report)
        report.fanout_us_per_delivery = await _fanout_cost(store, config.fanout_sample)
        await _inbox_cost(store, config.fanout_sample, report)
    finally:
        await store.close()
    for line in lines(report):
        _say(line)
    return report


async def _baselines(config: Config, store: EventStore, report: Report) -> None:
    sample = [codec.encode(workload.rank_exited(workload.new_id()))] * config.baseline_entries
    started = time.perf_counter()
    written = await append_xadd(store.redis, keys.log_stream(0), sample, WRITERS)
    report.xadd_per_s = written / (time.perf_counter() - started)
    _say(f"baseline: raw XADD, {WRITERS} writers: {report.xadd_per_s:,.0f} entries/s")
    await _copy_cost(store, config.copy_sample, report)
    await store.redis.flushdb()  # functions survive FLUSHDB; the log starts empty
    pure = placement.figures(
        config.nodes, config.gpus, config.runs, config.pure_rounds, config.seed
    )
    report.pure_placements_per_s = pure.placements / pure.decide_s if pure.decide_s else 0.0
    report.pure_first_pass_per_s = pure.first_decisions / pure.first_s if pure.first_s else 0.0
    _say(
        f"baseline: pure decide, {pure.queued:,} queued: steady state "
        f"{report.pure_placements_per_s:,.0f} placements/s of decide time "
        f"({pure.decide_s / config.pure_rounds * 1000:.1f} ms per round), first pass "
        f"{report.pure_first_pass_per_s:,.0f} decisions/s"
    )


async def _serve(config: Config, url: str, store: SharedStore, tmp: Path, report: Report) -> None:
    rng = random.Random(config.seed)
    low, high = config.runtime_s * 0.5, config.runtime_s * 1.5
    fleet = Fleet(
        store,
        nodes=config.nodes,
        gpus=config.gpus,
        gpu_type=placement.GPU_TYPE,
        runtime_s=lambda: rng.uniform(low, high),
        heartbeat_ttl_s=config.heartbeat_ttl_s,
    )
    specs = [placement.random_spec(rng, index) for index in range(config.runs)]
    started = time.perf_counter()
    server_cpu = await _server_cpu_s(store.redis)
    own_cpu = time.process_time()
    async with fleet:
        await fleet.register()
        _say(f"fleet: {config.nodes:,} nodes registered in {time.perf_counter() - started:.1f} s")
        log_path = tmp / "scheduler.log"
        profile = config.profile.resolve() if config.profile is not None else None
        async with _scheduler(url, log_path, store.redis, profile) as scheduler:
            scheduler_cpu = cpu_s(scheduler.pid)  # its start-up (imports) is not the bench
            fleet.expected = config.runs
            users = asyncio.create_task(_submit_all(RunRequests(store), specs))
            try:
                await _wait_ended(config, fleet, scheduler, users)
                await users
            finally:
                users.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await users
            report.cpu_s["scheduler"] = cpu_s(scheduler.pid) - scheduler_cpu
        report.scheduler_terms = log_path.read_text(errors="replace").count('"scheduler.active"')
    report.cpu_s["valkey"] = await _server_cpu_s(store.redis) - server_cpu
    report.cpu_s["bench (agents + users)"] = time.process_time() - own_cpu
    report.wall_s = time.perf_counter() - started
    if profile is not None:
        out = io.StringIO()
        stats = pstats.Stats(str(profile), stream=out)
        stats.sort_stats("tottime").print_stats(20)
        # Where the scheduler's own steps spend it (a coroutine's time excludes its awaits).
        stats.sort_stats("cumtime").print_stats(r"/(services|events)/", 30)
        report.scheduler_profile = out.getvalue()


async def _submit_all(requests: RunRequests, specs: Sequence[RunSpec]) -> None:
    """Submits as the API server decides them (in this process: the bench is the scheduler's)."""
    pending = iter(specs)
    user = Principal(name="bench@scale", role="user")

    async def submits() -> None:
        for spec in pending:
            await requests.append_submit(user, spec)

    await asyncio.gather(*(submits() for _ in range(USERS)))


async def _wait_ended(
    config: Config,
    fleet: Fleet,
    scheduler: asyncio.subprocess.Process,
    users: asyncio.Task[None],
) -> None:
    deadline = time.monotonic() + config.timeout_s
    started = time.monotonic()
    told = started
    while True:
        await wait_event(fleet.all_ended, 1.0)
        if fleet.errors:
            raise RuntimeError(f"a simulated agent failed: {fleet.errors[0]!r}")
        if fleet.all_ended.is_set():
            return
        if users.done() and users.exception() is not None:
            await users  # raises the users' error
        if scheduler.returncode is not None:
            raise RuntimeError(f"the scheduler exited with {scheduler.returncode}")
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(
                f"{config.runs - len(fleet.ended):,} runs had not ended after {config.timeout_s} s"
            )
        if now - told >= 10:
            told = now
            _say(
                f"  {now - started:5.0f} s: {len(fleet.ended):,} of {config.runs:,} runs ended, "
                f"{fleet.read:,} events"
            )


@contextlib.asynccontextmanager
async def _scheduler(
    url: str, log_path: Path, client: aioredis.Redis, profile: Path | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m services.scheduler`` on ``url``, active (holding the lease) when yielded;
    under cProfile writing to ``profile`` if given (written when it stops on SIGTERM)."""
    env = dict(os.environ)
    env.update(RUNPLANE_REDIS_URL=url, RUNPLANE_SCHEDULER_ID=SCHEDULER, RUNPLANE_PARTITIONS="1")
    profiling = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    with log_path.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *profiling, "-m", "services.scheduler",
            env=env, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not await client.exists(keys.scheduler_lease()):
            if process.returncode is not None or time.monotonic() > deadline:
                tail = await asyncio.to_thread(log_path.read_text, errors="replace")
                raise RuntimeError(f"the scheduler did not become active:\n{tail[-3000:]}")
            await asyncio.sleep(0.05)  # allowed: polling inside a deadline loop
        yield process
    finally:
        await stop(process, within_s=15)


# --- reading the log back ------------------------------------------------------------------


async def _analyse(store: EventStore, report: Report) -> None:
    """Fold every run under the lifecycle rules and take the figures from the log's times."""
    reading = _Reading(report)
    async for record in store.replay():
        reading.add(record)
    reading.finish()


class _Reading:
    """The log read back, one event at a time, into the report."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.runs: dict[str, RunState] = {}
        self.held: dict[Gpu, Attempt] = {}  # who holds each GPU, from the placements
        self.holding: dict[Attempt, list[Gpu]] = {}
        self.submitted: dict[str, int] = {}
        self.scheduled: dict[Attempt, int] = {}
        self.rank_running: dict[Attempt, int] = {}  # the time of its last rank.running
        self.rank_exited: dict[Attempt, int] = {}  # the time of its last rank.exited
        self.placed_at: list[int] = []
        self.first = self.last = 0

    def add(self, record: Recorded) -> None:
        event, report = record.event, self.report
        if isinstance(event, ev.NodeEvent):
            report.nodes_lost += isinstance(event, ev.NodeLost)
            return
        if not isinstance(event, ev.RunEvent):
            return
        report.run_events += 1
        self.first = min(self.first, event.time) if self.first else event.time
        self.last = max(self.last, event.time)
        report.scheduler_events += event.actor == SCHEDULER
        try:
            self.runs[event.run_id] = evolve(self.runs.get(event.run_id), event)
        except IllegalTransition as exc:
            report.refused.append(f"{record.position}: {exc}")
        self._step(event, (event.run_id, event.attempt))

    def _step(self, event: ev.AnyRunEvent, attempt: Attempt) -> None:
        report = self.report
        match event:
            case ev.RunSubmitted():
                self.submitted[event.run_id] = event.time
            case ev.AttemptScheduled():
                self._placed(event, attempt)
            case ev.RankRunning():
                self.rank_running[attempt] = event.time
            case ev.RankExited():
                self.rank_exited[attempt] = event.time
            case ev.AttemptRunning():
                placed, running = self.scheduled[attempt], self.rank_running[attempt]
                report.to_running_ms.append(event.time - placed)
                report.agents_running_ms.append(running - placed)
                report.scheduler_running_ms.append(event.time - running)
            case ev.AttemptCompleted() | ev.AttemptStopped() | ev.AttemptFailed():
                if (exited := self.rank_exited.pop(attempt, None)) is not None:
                    report.scheduler_end_ms.append(event.time - exited)
                for gpu in self.holding.pop(attempt, []):
                    if self.held.get(gpu) == attempt:
                        del self.held[gpu]
            case ev.RetryScheduled():
                report.retries += 1
            case ev.AttemptTerminating() if event.reason and event.reason.code == "Preempted":
                report.preempted += 1
            case _:
                pass

    def _placed(self, event: ev.AttemptScheduled, attempt: Attempt) -> None:
        self.placed_at.append(event.time)
        self.scheduled[attempt] = event.time
        if event.attempt == 0:
            self.report.queue_wait_ms.append(event.time - self.submitted[event.run_id])
        gpus = [(rank.node, gpu) for rank in event.ranks for gpu in rank.gpus]
        for gpu in gpus:
            if (other := self.held.get(gpu)) is not None:
                self.report.double_booked.append((gpu, other, attempt))
            self.held[gpu] = attempt
        self.holding[attempt] = gpus

    def finish(self) -> None:
        report, runs = self.report, self.runs.values()
        report.statuses = dict(Counter(run.status.value for run in runs))
        report.attempts = sum(len(run.attempts) for run in runs)
        report.span_s = (self.last - self.first) / 1000
        report.placements = len(self.placed_at)
        if self.placed_at:
            report.placement_span_s = (max(self.placed_at) - min(self.placed_at)) / 1000
            report.peak_placements_1s = _busiest_second(sorted(self.placed_at))


def _busiest_second(times: list[int]) -> int:
    best, start = 0, 0
    for end, now in enumerate(times):
        while now - times[start] >= 1000:
            start += 1
        best = max(best, end - start + 1)
    return best


async def _copy_cost(store: EventStore, sample: int, report: Report) -> None:
    """Server CPU of ``EventStore.append`` of one run event (``workload.rank_exited``), and
    what each of ``COPY_TOLD`` told nodes adds to it: appends to a run with told nodes against
    appends to one without, in alternating rounds so that both see the same machine."""
    quiet, told = workload.new_id(), workload.new_id()
    nodes = [f"bench-copy-{index}" for index in range(COPY_TOLD)]
    await store.redis.sadd(keys.told_nodes(workload.rank_exited(told).aggregate, 0), *nodes)
    spent = {quiet: 0.0, told: 0.0}
    per_round = max(1, sample // COPY_ROUNDS)
    for _ in range(COPY_ROUNDS):
        for run_id in (quiet, told):
            events = [workload.rank_exited(run_id) for _ in range(per_round)]
            before = await _server_cpu_s(store.redis)
            await _append_each(store, events)
            spent[run_id] += await _server_cpu_s(store.redis) - before
    appends = per_round * COPY_ROUNDS
    report.append_us = spent[quiet] / appends * 1e6
    report.copy_us_per_node = (spent[told] - spent[quiet]) / (appends * COPY_TOLD) * 1e6
    _say(
        f"baseline: append of a run event (EventStore.append): {report.append_us:.1f} us of "
        f"server CPU with no node told, +{report.copy_us_per_node:.1f} us per node told "
        f"({COPY_TOLD} told vs none, {appends:,} appends each)"
    )


async def _append_each(store: EventStore, events: Sequence[ev.Event]) -> None:
    pending = iter(events)

    async def appends() -> None:
        for event in pending:
            await store.append([event], expected_version=None)

    await asyncio.gather(*(appends() for _ in range(WRITERS)))


async def _inbox_cost(store: EventStore, sample: int, report: Report) -> None:
    """Count the copies the run's appends made into the inboxes, and the server CPU of one
    inbox delivery: each inbox read through a new group of its own, as each agent reads its
    inbox (``LogConsumer``: XREADGROUP and XACK in batches), until ``sample`` were delivered."""
    client, group = store.redis, "bench:inbox"
    streams = [key async for key in client.scan_iter(match=keys.inbox_prefix(0) + "*")]
    report.inboxes = len(streams)
    for stream in streams:
        info = await client.xinfo_stream(stream)
        report.inbox_copies += int(info.get("entries-added", info["length"]))
        await client.xgroup_create(stream, group, id="0")
    try:
        before = await _server_cpu_s(client)
        delivered = 0
        for stream in streams:
            delivered += await _deliver(client, stream, group, sample - delivered)
            if delivered >= sample:
                break
        spent = await _server_cpu_s(client) - before
    finally:
        for stream in streams:
            await client.xgroup_destroy(stream, group)
    report.inbox_us_per_delivery = spent / delivered * 1e6 if delivered else None


async def _deliver(client: aioredis.Redis, stream: str | bytes, group: str, most: int) -> int:
    """Reads ``stream`` through ``group`` as ``LogConsumer`` does, to its end or ``most``
    entries; how many were delivered."""
    delivered = 0
    while delivered < most:
        reply = cast(
            list[tuple[bytes, list[tuple[bytes, Any]]]],
            await client.xreadgroup(group, "agent", {stream: ">"}, count=FANOUT_BATCH),
        )
        entries = reply[0][1] if reply else []
        if not entries:
            break
        await client.xack(stream, group, *(entry_id for entry_id, _ in entries))
        delivered += len(entries)
    return delivered


async def _fanout_cost(store: EventStore, sample: int) -> float | None:
    """Server CPU microseconds to deliver one entry of this log to one more consumer group
    (XREADGROUP and XACK in batches, as each real agent's ``LogConsumer`` reads)."""
    client, stream, group = store.redis, keys.log_stream(0), "bench:fanout"
    await client.xgroup_create(stream, group, id="0")
    try:
        before = await _server_cpu_s(client)
        delivered = await _deliver(client, stream, group, sample)
        spent = await _server_cpu_s(client) - before
    finally:
        await client.xgroup_destroy(stream, group)
    return spent / delivered * 1e6 if delivered else None


# --- measuring -----------------------------------------------------------------------------


async def _server_cpu_s(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _pct(values: Sequence[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


def _pcts(values: Sequence[int]) -> str:
    return f"p50 {_pct(values, 0.5):,.0f} p99 {_pct(values, 0.99):,.0f}"


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.3f}x" if baseline else "n/a"


def lines(report: Report) -> list[str]:
    c, r = report.config, report
    per_span = 1 / r.span_s if r.span_s else 0.0
    statuses = ", ".join(f"{count:,} {status}" for status, count in sorted(r.statuses.items()))
    out = [
        (
            f"outcome: {'OK' if ok(r) else 'PROBLEM'}: {statuses}; {r.attempts:,} attempts "
            f"({r.preempted:,} preempted, {r.retries:,} retries); {len(r.refused)} events "
            f"refused by the rules; {len(r.double_booked)} GPUs double-booked; "
            f"{r.nodes_lost} nodes lost"
        ),
        (
            f"log span, first submission -> last end: {r.span_s:.1f} s (wall {r.wall_s:.1f} s "
            f"with registration); {c.runs * per_span:,.1f} runs/s"
        ),
        (
            f"end-to-end: {r.run_events:,} run events = {r.events_per_s:,.0f} events/s = "
            f"{_ratio(r.events_per_s, r.xadd_per_s)} raw XADD"
        ),
        (
            f"placements: {r.placements:,} in {r.placement_span_s:.1f} s = "
            f"{r.placements_per_s:,.0f}/s (busiest second {r.peak_placements_1s:,}) = "
            f"{_ratio(r.placements_per_s, r.pure_placements_per_s)} pure decide (steady state)"
        ),
        (
            f"scheduler: {r.scheduler_events:,} events written = "
            f"{r.scheduler_events * per_span:,.0f}/s; active terms: {r.scheduler_terms}"
        ),
        (
            f"latency (log clock, ms): submitted -> placed p50 {_pct(r.queue_wait_ms, 0.5):,.0f}"
            f" p99 {_pct(r.queue_wait_ms, 0.99):,.0f}; placed -> RUNNING p50 "
            f"{_pct(r.to_running_ms, 0.5):,.0f} p99 {_pct(r.to_running_ms, 0.99):,.0f}"
        ),
        (
            f"  of which agents (placed -> last rank.running) {_pcts(r.agents_running_ms)}; "
            f"last rank.running -> attempt.running {_pcts(r.scheduler_running_ms)}"
            f"; scheduler (last rank.exited -> attempt's end) {_pcts(r.scheduler_end_ms)}"
        ),
        "CPU s: "
        + ", ".join(
            f"{name} {seconds:.1f} ({seconds * per_span:.0%} of the span)"
            for name, seconds in r.cpu_s.items()
        ),
    ]
    if scheduler_cpu := r.cpu_s.get("scheduler"):
        # The scheduler is one thread: one core is its ceiling, whatever else shares the machine.
        out.append(
            f"scheduler CPU: {scheduler_cpu / c.runs * 1000:.2f} ms per run, "
            f"{r.placements / scheduler_cpu:,.0f} placements and "
            f"{r.run_events / scheduler_cpu:,.0f} log events per CPU-second of the scheduler"
        )
    out += _agents_cost(r)
    if r.refused:
        out.append(f"first refused: {r.refused[0]}")
    if r.double_booked:
        out.append(f"first double-booked: {r.double_booked[0]}")
    if r.scheduler_profile is not None:
        out.append(f"the scheduler's cProfile ({c.profile}):\n{r.scheduler_profile}")
    return out


def _agents_cost(r: Report) -> list[str]:
    """The agents' server cost per run: the inbox model, and the whole-log one it replaced."""
    if r.inbox_us_per_delivery is None or not r.run_events:
        return []
    c = r.config
    runs_per_s = c.runs / r.span_s if r.span_s else 0.0
    copies, events = r.inbox_copies / c.runs, r.run_events / c.runs
    inbox_ms = copies * (r.copy_us_per_node + r.inbox_us_per_delivery) / 1000
    out = [
        (
            f"agents' inboxes: {r.inbox_copies:,} copies into {r.inboxes:,} inboxes = "
            f"{copies:.1f} per run ({events:.1f} run events, {copies / events:.2f} copies each"
            f", the nodes' own events counted in); a copy costs the server "
            f"{r.copy_us_per_node:.1f} us to write (paid by the appends above) + "
            f"{r.inbox_us_per_delivery:.1f} us to deliver to its node's group"
        ),
        (
            f"  not simulated, the deliveries (bench.fleet feeds its agents from one reader of "
            f"the global log): server CPU {inbox_ms:.2f} ms per run for writing and delivering "
            f"its copies = ~{inbox_ms / 1000 * runs_per_s:.2f} cores at {runs_per_s:,.1f} "
            f"runs/s, whatever the fleet's size"
        ),
    ]
    if r.fanout_us_per_delivery is not None:
        for agents in sorted({c.nodes, Config().nodes}):
            whole_ms = events * agents * r.fanout_us_per_delivery / 1000
            ratio = f"{whole_ms / inbox_ms:,.1f}x" if inbox_ms > 0 else "n/a"
            out.append(
                f"  the model it replaced, {agents:,} agents each reading the whole log "
                f"({r.fanout_us_per_delivery:.1f} us a delivery): {whole_ms:,.1f} ms per run = "
                f"~{whole_ms / 1000 * runs_per_s:,.1f} cores at {runs_per_s:,.1f} runs/s, "
                f"{ratio} the inboxes'"
            )
    return out


def ok(report: Report) -> bool:
    """Every run completed, by the rules, never two attempts on one GPU, no node lost."""
    return (
        report.completed == report.config.runs
        and not report.double_booked
        and not report.refused
        and not report.nodes_lost
    )


def _say(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=defaults.nodes)
    parser.add_argument("--gpus", type=int, default=defaults.gpus, help="GPUs per node")
    parser.add_argument("--runs", type=int, default=defaults.runs)
    parser.add_argument(
        "--runtime-s", type=float, default=defaults.runtime_s, help="mean simulated runtime"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--timeout-s", type=float, default=defaults.timeout_s)
    parser.add_argument("--redis-url", help="an empty database to use instead of a private server")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the scheduler under cProfile, keep its stats in FILE, print a summary",
    )
    args = parser.parse_args(argv)
    config = Config(
        nodes=args.nodes,
        gpus=args.gpus,
        runs=args.runs,
        runtime_s=args.runtime_s,
        seed=args.seed,
        timeout_s=args.timeout_s,
        profile=args.profile,
    )
    if (problem := config.problem()) is not None:
        parser.error(problem)
    # The agents' info lines (a few per rank) would drown the figures: warnings only, as the
    # services log them (JSON lines, plain tracebacks: a rich one per failure is slow).
    configure("bench.scale", level="WARNING")
    return 0 if ok(asyncio.run(run(config, args.redis_url))) else 1


if __name__ == "__main__":
    sys.exit(main())
