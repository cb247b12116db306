"""The API server's cost, each figure a ratio against a baseline taken in the same run, on the
same server (issue 13).

``python -m bench.api [--runs N] [--queries N] [--submits N] [--followers N] [--lines N]``
starts a local stack as ``mcli dev up`` does (Valkey, the services, the API server, 2
node-agents x 8 simulated GPUs) in a temp dir, makes its admin's key, waits until it is ready,
and measures, over HTTP and the WebSocket as a client does:

- listing: ``getRunsPaginated`` with the real client's document, 100 runs a page, over
  ``--runs`` runs: everyone's runs as an admin asks (``entity.organizationIds``), one run by
  ``filters.name``, and a user's own first page; p50/p99 of ``--queries`` requests each,
  interleaved with the baseline's: the same number of ``{ __typename }`` POSTs (one httpx
  client, one kept-alive connection, the same server);
- submit -> RUNNING: ``--submits`` runs of ``true`` submitted one after another with the
  ``createRun`` mutation (each waited for to its end): from the mutation's send (this process's
  clock) to the attempt's ``attempt.running`` (the log's clock, on the same machine), the log's
  own ``run.submitted`` -> ``attempt.running``, and the mutation's round trip; baseline: one
  append of a ``run.submitted`` through the event store;
- log followers: a run printing ``--lines`` lines, one every ``--interval-ms``, each with its
  wall-clock time, followed by ``--followers`` concurrent ``getRunLogsV2(follow: true)``
  subscriptions (the CLI's client, ``graphql-transport-ws``, one socket each): lag = receive
  time - the line's time, p50/p99/max over every line every follower got, and whether each got
  every line; baseline: a copy of the run followed by one follower alone. The run prints a first
  line and waits until every follower has it (at most ``_START_S``; the report says how many
  did) before its timed lines; followers still going ``_DRAIN_S`` after the last line was due
  are cut off and counted. Meanwhile a ``{ __typename }`` every 20 ms shows what any other
  request meets. The followers share this one process: its own CPU is in the lag.

The listed runs go in through the store with the API's own ``RunRequests.append_submit`` (names
reserved as a submit reserves them), concurrently, on a cluster with no nodes, where the scheduler
queues them ("Waiting for nodes"), so they hold no GPU and take no part in what follows. The
listing waits until the projector has folded every run and the scheduler has queued each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.mapi import CREATE, RUNS
from bench.processes import cpu_s
from bench.projections import percentile
from cli.api import Api
from cli.client import Client
from cli.stack import LocalStack, StackConfig
from cli.stackkey import ensure_admin, read_key
from cli.stackready import wait_ready
from events import keys
from events.access import Principal
from events.lifecycle import RunState, evolve
from events.model import AttemptRunning, RunEvent, RunSubmitted
from events.spec import Compute, RunSpec
from events.status import RunStatus
from services.api.accounts import Accounts
from services.api.runs import RunRequests, new_id
from services.api.users import Directory
from services.api.wire import run_input
from services.core.store import EventStore

NODES, GPUS = 2, 8
ADMIN, USER = "admin@bench", "user@bench"
SEED_CLUSTER = "seeded"  # no node registers here: the scheduler queues its runs
PAGE = 100
USER_SHARE = 10  # every 10th seeded run is USER's
_SEED_BATCH = 200
_WAIT_S = 300.0
_PROBE_S = 0.02
_START_S = 20.0  # for every follower to be following before the lines begin
_DRAIN_S = 30.0  # after the last line is due, for the followers to finish

TRIVIAL = "{ __typename }"
EVERYONE = {"organizationIds": ["runplane"]}

# The busy run: a first line, a wait for the bench's go (a file), then the timed lines.
_BUSY = """
import os, sys, time
print("ready", flush=True)
deadline = time.monotonic() + {wait_s}
while not os.path.exists({go!r}):
    if time.monotonic() > deadline:
        sys.exit("no go from the bench")
    time.sleep(0.002)
for i in range({lines}):
    print(f"line {{i}} {{time.time():.6f}}", flush=True)
    time.sleep({interval_s})
"""


@dataclass(frozen=True)
class Config:
    runs: int = 10_000
    queries: int = 200
    submits: int = 30
    followers: int = 100
    lines: int = 1_000
    interval_ms: float = 10.0


@dataclass
class Figure:
    label: str
    values: list[float]  # ms

    def p(self, q: float) -> float:
        return percentile(self.values, q)


@dataclass
class Followed:
    """What the followers of one run got, and what a trivial query took meanwhile."""

    followers: int
    lags: list[float] = field(default_factory=list)  # ms, every timed line every follower got
    counts: list[int] = field(default_factory=list)  # timed lines, per follower
    complete: int = 0  # followers that got every line, each once, in order
    following: int = 0  # followers that were following when the lines began
    cut_off: int = 0  # followers still going _DRAIN_S after the last line was due
    errors: Counter[str] = field(default_factory=Counter)  # how followers ended early
    probes: list[float] = field(default_factory=list)  # ms, `{ __typename }` while they follow
    probe_errors: Counter[str] = field(default_factory=Counter)
    api_cpu_s: float = 0.0


@dataclass
class Report:
    config: Config
    listing: list[Figure]
    submit: list[Figure]
    alone: Followed
    crowd: Followed


# --- the stack ----------------------------------------------------------------------------


async def _count(store: EventStore, kind: str, index: str | None = None) -> int:
    """Rows of ``run_status`` (with ``index``: members of that index) in its active build."""
    active = await store.redis.get(keys.projection_active("run_status"))
    if active is None:
        return 0
    namespace = active.decode() if isinstance(active, bytes) else str(active)
    if index is not None:
        return int(await store.redis.zcard(keys.projection_index("run_status", namespace, index)))
    return int(await store.redis.hlen(keys.projection_rows("run_status", namespace, kind)))


async def _until(probe: Callable[[], Awaitable[bool]], what: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within_s:g} s")
        await asyncio.sleep(0.05)  # another process's progress: polled, with a deadline


async def _seed(store: EventStore, count: int) -> None:
    """``count`` runs on the nodeless cluster, every ``USER_SHARE``-th one USER's."""
    requests = RunRequests(store)
    spec = RunSpec(
        name="seeded",
        image="mosaicml/pytorch:latest",
        command="true",
        compute=Compute(cluster=SEED_CLUSTER, gpus=1),
    )
    admin, user = Principal(name=ADMIN, role="admin"), Principal(name=USER, role="user")
    for start in range(0, count, _SEED_BATCH):
        await asyncio.gather(
            *(
                requests.append_submit(user if n % USER_SHARE == 0 else admin, spec)
                for n in range(start, min(count, start + _SEED_BATCH))
            )
        )


async def _appends(store: EventStore, count: int) -> Figure:
    """The baseline of a submit: one append of a ``run.submitted``, timed ``count`` times."""
    spec = RunSpec(
        name="append",
        image="mosaicml/pytorch:latest",
        command="true",
        compute=Compute(cluster=SEED_CLUSTER, gpus=1),
    )
    took: list[float] = []
    for n in range(count):
        run_id = new_id()
        event = RunSubmitted(id=new_id(), actor=ADMIN, run_id=run_id, name=f"append-{n}", spec=spec)
        began = time.perf_counter()
        await store.append([event], expected_version=0)
        took.append((time.perf_counter() - began) * 1000)
    return Figure("baseline: one append of run.submitted (store)", took)


async def _run_to_end(store: EventStore, run_id: str) -> list[RunEvent]:
    """The run's events once it has ended (blocking reads of its own stream)."""
    events: list[RunEvent] = []
    state: RunState | None = None
    after = "0-0"
    deadline = time.monotonic() + _WAIT_S
    while state is None or not state.status.is_terminal():
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not end within {_WAIT_S:g} s")
        for record in await store.wait_history(f"run:{run_id}", after, 1000):
            assert isinstance(record.event, RunEvent)
            events.append(record.event)
            state = evolve(state, record.event)
            after = record.position
    return events


# --- over HTTP ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """One user's client of the API: one httpx client (its connection kept alive), their key."""

    http: httpx.AsyncClient
    url: str
    key: str

    async def __call__(self, document: str, variables: dict[str, Any] | None = None) -> Any:
        """``data`` of ``document``; any error is the bench's failure."""
        body = {"query": document, "variables": variables or {}}
        response = await self.http.post(self.url, json=body, headers={"Authorization": self.key})
        answer = response.json()
        if response.status_code != 200 or answer.get("errors"):
            raise RuntimeError(f"HTTP {response.status_code}: {answer}")
        return answer["data"]


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    await call()
    return (time.perf_counter() - began) * 1000


async def _listing(admin: Caller, user: Caller, n: int) -> list[Figure]:
    def page(**data: Any) -> dict[str, Any]:
        asked = {"filters": {}, "includeDeleted": False, "limit": PAGE} | data
        return {"getRunsPaginatedData": asked}

    everyone = page(entity=EVERYONE)
    first = (await admin(RUNS, everyone))["getRunsPaginated"]
    if len(first["runs"]) != PAGE or not first["hasNextPage"]:
        raise RuntimeError(f"a first page of {len(first['runs'])} runs: fewer than seeded")
    name = first["runs"][-1]["name"]
    by_name = page(entity=EVERYONE, filters={"name": {"in": [name]}})
    if len((await admin(RUNS, by_name))["getRunsPaginated"]["runs"]) != 1:
        raise RuntimeError(f"run {name} not found by its name")
    own = (await user(RUNS, page()))["getRunsPaginated"]["runs"]
    if not own or any(r["createdByEmail"] != USER for r in own):
        raise RuntimeError(f"{USER}'s own page: {len(own)} runs, or someone else's among them")

    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("baseline: { __typename }", lambda: admin(TRIVIAL)),
        (f"everyone's runs, first page (admin, {PAGE} runs)", lambda: admin(RUNS, everyone)),
        ("one run by name (filters.name, admin)", lambda: admin(RUNS, by_name)),
        (f"a user's own runs, first page ({len(own)} runs)", lambda: user(RUNS, page())),
    ]
    for _, call in calls:  # warm: each document parsed and validated once, connections open
        await call()
    figures = [Figure(label, []) for label, _ in calls]
    for _ in range(n):  # interleaved, so a drift in the machine's load falls on each alike
        for figure, (_, call) in zip(figures, calls, strict=True):
            figure.values.append(await _timed(call))
    return figures


def _spec(command: str, name: str) -> RunSpec:
    return RunSpec(
        name=name,
        image="mosaicml/pytorch:latest",
        command=command,
        compute=Compute(cluster="local", gpus=1),
    )


async def _create(caller: Caller, spec: RunSpec) -> tuple[str, str]:
    data = await caller(CREATE, {"createRunData": {"runInput": run_input(spec)}})
    [run] = data["createRun"]
    return run["id"], run["name"]


async def _submits(admin: Caller, store: EventStore, n: int) -> list[Figure]:
    round_trip, sent_to_running, log_to_running = [], [], []
    spec = _spec("true", "submit")
    for _ in range(n):
        sent_ms = time.time() * 1000
        began = time.perf_counter()
        run_id, _ = await _create(admin, spec)
        round_trip.append((time.perf_counter() - began) * 1000)
        events = await _run_to_end(store, run_id)
        running = next(e.time for e in events if isinstance(e, AttemptRunning))
        sent_to_running.append(running - sent_ms)
        log_to_running.append(float(running - events[0].time))
    return [
        Figure("createRun round trip (client)", round_trip),
        Figure("createRun sent -> attempt.running", sent_to_running),
        Figure("run.submitted -> attempt.running (log times)", log_to_running),
    ]


# --- followers ----------------------------------------------------------------------------


class _Starting:
    """Counts the followers that are following (they got the run's first line) or have ended;
    set once all are one or the other."""

    def __init__(self, followers: int) -> None:
        self.left = followers
        self.following = 0
        self.all = asyncio.Event()

    def settled(self, following: bool) -> None:
        self.following += following
        self.left -= 1
        if self.left == 0:
            self.all.set()


async def _follow(api: Api, name: str, starting: _Starting, into: Followed, got: list[int]) -> None:
    """Follow the run's output to its end (or the follower's error, counted in ``into``),
    adding the index of each timed line to ``got`` as it comes."""
    following = False
    try:
        async for chunk in Client(api).output(name, 0, None, follow=True):
            now = time.time()
            for line in chunk.splitlines():
                words = line.split()
                if words[:1] == [b"ready"]:
                    following = True
                    starting.settled(following=True)
                elif words[:1] == [b"line"]:
                    got.append(int(words[1]))
                    into.lags.append((now - float(words[2])) * 1000)
    except Exception as error:  # noqa: BLE001 - a follower's failure is one of the figures
        into.errors[f"{type(error).__name__}: {error}"] += 1
    finally:
        if not following:
            starting.settled(following=False)


async def _probe(admin: Caller, into: Followed) -> None:
    """``{ __typename }`` every ``_PROBE_S`` until cancelled: what any request meets meanwhile."""
    while True:
        began = time.perf_counter()
        try:
            await admin(TRIVIAL)
        except (RuntimeError, httpx.HTTPError) as error:
            into.probe_errors[f"{{ __typename }} failed: {str(error)[:100]}"] += 1
        except asyncio.CancelledError:
            waited = time.perf_counter() - began
            if waited > 1:
                into.probe_errors[f"{{ __typename }} unanswered after {waited:.1f} s"] += 1
            raise
        else:
            into.probes.append((time.perf_counter() - began) * 1000)
        await asyncio.sleep(_PROBE_S)  # the probes' pace, not a wait for anything


async def _followed(
    admin: Caller, api: Api, stack: LocalStack, config: Config, followers: int
) -> Followed:
    # Where the run sees it: not the stack's state (0700; ranks run as their own uids as root).
    gates = Path(tempfile.mkdtemp(prefix="runplane-bench-"))
    os.chmod(gates, 0o755)
    go = gates / f"go-{new_id()}"
    script = _BUSY.format(
        wait_s=_WAIT_S, go=str(go), lines=config.lines, interval_s=config.interval_ms / 1000
    )
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"
    _, name = await _create(admin, _spec(command, "busy"))
    result = Followed(followers)
    starting = _Starting(followers)
    got: list[list[int]] = [[] for _ in range(followers)]
    tasks = [asyncio.create_task(_follow(api, name, starting, result, lines)) for lines in got]
    with contextlib.suppress(TimeoutError):  # the lines start anyway; the report says who was in
        await asyncio.wait_for(starting.all.wait(), _START_S)
    result.following = starting.following
    api_pid = stack.status().get("api")
    cpu_before = cpu_s(api_pid)
    probing = asyncio.create_task(_probe(admin, result))
    go.touch()
    due = config.lines * config.interval_ms / 1000 + _DRAIN_S
    _, late = await asyncio.wait(tasks, timeout=due)
    shutil.rmtree(gates, ignore_errors=True)
    for task in [*late, probing]:
        task.cancel()
    await asyncio.gather(*late, probing, return_exceptions=True)
    result.api_cpu_s = cpu_s(api_pid) - cpu_before
    result.cut_off = len(late)
    result.counts = [len(lines) for lines in got]
    result.complete = sum(lines == list(range(config.lines)) for lines in got)
    return result


# --- the whole run ------------------------------------------------------------------------


async def run(config: Config) -> Report:
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp) / "stack")
        stack_config = StackConfig(nodes=NODES, gpus_per_node=GPUS, grace_period_s=5)
        stack.up(stack_config)
        store = EventStore.from_settings(stack.operator_settings())
        try:
            await ensure_admin(store, stack.state_dir, ADMIN, int(time.time() * 1000))
            await wait_ready(stack, stack_config)
            _, user_key = await Accounts(store, Directory(store)).add(ADMIN, USER, "user")
            return await _measure(stack, store, config, read_key(stack.state_dir) or "", user_key)
        finally:
            await store.close()
            stack.down()


async def _measure(
    stack: LocalStack, store: EventStore, config: Config, admin_key: str, user_key: str
) -> Report:
    appends = await _appends(store, config.submits)
    print(f"seeding {config.runs:,} runs ...", file=sys.stderr, flush=True)
    await _seed(store, config.runs)
    seeded = config.runs + config.submits
    await _until(
        lambda: _count_at_least(store, seeded), f"{seeded:,} runs folded and queued", _WAIT_S
    )
    # one client, its connections kept alive; the local stack's own URL, no proxy
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=5), trust_env=False) as http:
        admin = Caller(http, stack.api_url, admin_key)
        user = Caller(http, stack.api_url, user_key)
        print("listing ...", file=sys.stderr, flush=True)
        listing = await _listing(admin, user, config.queries)
        print("submitting ...", file=sys.stderr, flush=True)
        submit = [appends, *await _submits(admin, store, config.submits)]
        api = Api(stack.api_url, admin_key)
        print("following ...", file=sys.stderr, flush=True)
        alone = await _followed(admin, api, stack, config, 1)
        crowd = await _followed(admin, api, stack, config, config.followers)
    return Report(config, listing, submit, alone, crowd)


async def _count_at_least(store: EventStore, seeded: int) -> bool:
    return (
        await _count(store, "run") >= seeded
        and await _count(store, "run", f"status:{RunStatus.QUEUED}") >= seeded
    )


# --- the report ---------------------------------------------------------------------------


def render(report: Report) -> str:
    config = report.config
    out = [f"API server of a local stack ({NODES} node-agents x {GPUS} simulated GPUs), one run"]

    def table(figures: list[Figure], baseline: Figure) -> None:
        out.append(f"  {'figure':<52} {'p50 ms':>8} {'p99 ms':>8} {'x p50':>8} {'x p99':>8}")
        for figure in figures:
            p50, p99 = figure.p(0.5), figure.p(0.99)
            ratios = (
                f" {p50 / baseline.p(0.5):>8.1f} {p99 / baseline.p(0.99):>8.1f}"
                if figure is not baseline
                else ""
            )
            out.append(f"  {figure.label:<52} {p50:>8.2f} {p99:>8.2f}{ratios}")

    total = config.runs + config.submits
    out.append(
        f"getRunsPaginated over {total:,} runs, {config.queries} requests each, interleaved, "
        "one kept-alive connection:"
    )
    table(report.listing, report.listing[0])
    out.append(
        f"submit -> RUNNING: {config.submits} runs of `true` one after another, createRun over "
        "HTTP (ratios to one append):"
    )
    table(report.submit, report.submit[0])
    out.append(
        f"log followers: getRunLogsV2(follow: true) of a run printing {config.lines:,} lines, "
        f"one every {config.interval_ms:g} ms; lag = receive time - the line's time:"
    )
    alone, crowd = report.alone, report.crowd
    out.append(
        f"  {'':<40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'x p50':>7} {'x p99':>7}"
        f"  {'every line':>10} {'API CPU s':>10}"
    )
    for followed in (alone, crowd):
        label = (
            "baseline: 1 follower alone" if followed is alone else f"{followed.followers} at once"
        )
        out.append(
            f"  {label:<40}{_spread(followed.lags, alone.lags)}"
            f"  {followed.complete:>5}/{followed.followers:<4} {followed.api_cpu_s:>10.2f}"
        )
    for followed in (alone, crowd):
        label = f"{{ __typename }} meanwhile, {followed.followers} following"
        out.append(f"  {label:<40}{_spread(followed.probes, alone.probes)}".rstrip())
    out.append(
        f"  lines got per follower ({crowd.followers} at once): min {min(crowd.counts):,}, "
        f"max {max(crowd.counts):,} of {config.lines:,}; {len(crowd.lags):,} in all"
    )
    out.append(
        f"  following when the lines began: {crowd.following}/{crowd.followers} within "
        f"{_START_S:g} s; still going {_DRAIN_S:g} s after the last line was due: {crowd.cut_off}"
    )
    for followed in (alone, crowd):
        for error, count in followed.errors.most_common():
            out.append(f"  ! {followed.followers} following: {count} followers ended: {error}")
        for error, count in followed.probe_errors.most_common():
            out.append(f"  ! {followed.followers} following: {count} x {error}")
    return "\n".join(out)


def _spread(values: list[float], baseline: list[float]) -> str:
    """p50, p99, max of ``values`` and their p50 and p99 against ``baseline``'s (if another)."""
    if not values:
        return f" {'-':>8} {'-':>8} {'-':>8} {'':>7} {'':>7}"
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    ratios = (
        f" {p50 / percentile(baseline, 0.5):>7.1f} {p99 / percentile(baseline, 0.99):>7.1f}"
        if values is not baseline and baseline
        else f" {'':>7} {'':>7}"
    )
    return f" {p50:>8.1f} {p99:>8.1f} {max(values):>8.1f}{ratios}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    parser.add_argument("--runs", type=int, default=defaults.runs, help="runs to list")
    parser.add_argument("--queries", type=int, default=defaults.queries, help="requests each")
    parser.add_argument("--submits", type=int, default=defaults.submits, help="runs submitted")
    parser.add_argument("--followers", type=int, default=defaults.followers)
    parser.add_argument("--lines", type=int, default=defaults.lines, help="lines the run prints")
    parser.add_argument("--interval-ms", type=float, default=defaults.interval_ms)
    args = parser.parse_args()
    config = Config(
        runs=args.runs,
        queries=args.queries,
        submits=args.submits,
        followers=args.followers,
        lines=args.lines,
        interval_ms=args.interval_ms,
    )
    print(render(asyncio.run(_terminable(run(config)))))


async def _terminable(work: Awaitable[Report]) -> Report:
    """``work``, cancelled by SIGTERM (a test's timeout), so its stack still goes down."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await work


if __name__ == "__main__":
    main()
