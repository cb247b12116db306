"""Figures of the projections: rebuild rate, steady-state lag, projector memory per run.

``python -m bench.projections`` (1,000,000 events) or ``--events N``. It starts its own
``valkey-server`` (AOF on, ``appendfsync always``) in a temp dir and prints:

- rebuild: every projection folded from position zero into fresh builds as ``mcli projections
  rebuild`` does (``services.projector.lanes``: the five folds spread over one process per
  core, each reading, decoding, folding and storing), events/s, against decoding the same
  entries without folding (``RedisLogReader`` pages + ``codec.recorded``); goal 1M events in
  < 15 s. Also the projector process's own catch-up (``python -m services.projector`` on the
  same log).
- lag: with 2,000 events/s appended through ``EventStore.append`` (8 writers, paced), the time
  from an append's acknowledgement to the moment every projection's checkpoint covers it
  (polled every ms); p50/p99/max; goal p99 < 50 ms.
- memory: the projector process's RSS once caught up with the log (and settled), minus its RSS
  on an empty log, per 100,000 runs.

The log is a realistic mix, interleaved over 400 runs in flight: 1 to 4 nodes of 8 GPUs, setup
and exits per rank, 15 % failures retried, 8 % stopped while queued, 5 % deleted; the log's
clock moves 0 to 40 ms per event. Entries are written with XADD at explicit ids (the store's
format, aggregate versions stamped), so the fill is fast and the log is what the store writes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis

from bench.processes import on_a_server, stop
from events import codec, keys
from events import model as ev
from events.spec import Compute, RunSpec, Scheduling
from projections.base import takes
from projections.catalog import NAMES, make_all
from projections.lanes import default_lanes, plan
from projections.reader import RedisLogReader
from projections.storage import RedisStore
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.projector.lanes import rebuild_many

START_MS = 1_795_550_400_000
NODES = 512
IN_FLIGHT = 400
SCHED = "scheduler@control-0"
ERROR = ev.Reason(category="user", code="Error", exit_code=1, failed_rank=0)
STOPPED = ev.Reason(category="stopped", code="Stopped", message="stopped by a user")
REBUILD_GOAL_S_PER_M = 15.0
LAG_GOAL_MS = 50.0
LOG = keys.log_stream(0)


# --- the workload ---------------------------------------------------------------------------


def run_events(rng: random.Random, index: int) -> list[ev.AnyEvent]:
    """One run's events, in order: what scheduler, agents and user append for it."""
    run = f"run-{index:07d}"
    user = f"user{index % 97}@example.com"
    nodes = rng.choice((1, 1, 2, 4))
    ids = (f"{run}-{n}" for n in range(1_000))
    spec = RunSpec(
        name=f"train-{index % 50}",
        image="mosaicml/pytorch:2.5.1_cu124-python3.11-ubuntu22.04",
        command="composer train.py /mnt/config/llama3-8b.yaml",
        compute=Compute(cluster="r1z1", gpus=8 * nodes, gpu_type="h100_80gb", nodes=nodes),
        scheduling=Scheduling(priority=rng.choice(("auto", "low")), max_retries=1),
        env_variables={"WANDB_PROJECT": "pretrain"},
        metadata={"team": f"team{index % 7}"},
    )
    roll = rng.random()
    events: list[ev.AnyEvent] = [
        ev.RunSubmitted(
            id=next(ids), actor=user, run_id=run, name=f"{spec.name}-{run[-6:]}", spec=spec
        ),
        ev.AttemptQueued(id=next(ids), actor=SCHED, run_id=run, reason="Insufficient resources"),
    ]
    if roll < 0.08:
        return [
            *events,
            ev.StopRequested(id=next(ids), actor=user, run_id=run),
            ev.AttemptStopped(id=next(ids), actor=user, run_id=run, reason=STOPPED),
        ]
    attempts = 2 if roll < 0.23 else 1
    first = rng.randrange(NODES)
    for attempt in range(attempts):
        fail = attempt == 0 and attempts == 2
        if attempt:
            events.append(
                ev.RetryScheduled(
                    id=next(ids), actor=SCHED, cause="user_failure", run_id=run, attempt=attempt
                )
            )
            events.append(
                ev.AttemptQueued(
                    id=next(ids),
                    actor=SCHED,
                    reason="Insufficient resources",
                    run_id=run,
                    attempt=attempt,
                )
            )
        names = [f"gpu-node-{(first + i) % NODES:03d}" for i in range(nodes)]
        ranks = [ev.RankPlacement(rank=i, node=n, gpus=list(range(8))) for i, n in enumerate(names)]
        events.append(
            ev.AttemptScheduled(
                id=next(ids),
                actor=SCHED,
                cluster="r1z1",
                gpu_type="h100_80gb",
                ranks=ranks,
                run_id=run,
                attempt=attempt,
            )
        )
        for step in (ev.ImagePullStarted, ev.ImagePullFinished):
            events += [
                step(
                    id=next(ids),
                    actor=f"agent@{n}",
                    rank=i,
                    node=n,
                    image=spec.image,
                    run_id=run,
                    attempt=attempt,
                )
                for i, n in enumerate(names)
            ]
        events += [
            ev.RankRunning(
                id=next(ids), actor=f"agent@{n}", rank=i, node=n, run_id=run, attempt=attempt
            )
            for i, n in enumerate(names)
        ]
        events.append(ev.AttemptRunning(id=next(ids), actor=SCHED, run_id=run, attempt=attempt))
        for i, n in enumerate(names):
            events.append(
                ev.RankExited(
                    id=next(ids),
                    actor=f"agent@{n}",
                    rank=i,
                    node=n,
                    exit_code=1 if fail and i == 0 else 0,
                    reason=ERROR if fail and i == 0 else None,
                    run_id=run,
                    attempt=attempt,
                )
            )
            if i == 0:
                events.append(
                    ev.AttemptTerminating(
                        id=next(ids),
                        actor=SCHED,
                        reason=ERROR if fail else None,
                        run_id=run,
                        attempt=attempt,
                    )
                )
        ending = (
            ev.AttemptFailed(id=next(ids), actor=SCHED, reason=ERROR, run_id=run, attempt=attempt)
            if fail
            else ev.AttemptCompleted(id=next(ids), actor=SCHED, run_id=run, attempt=attempt)
        )
        events.append(ending)
    if roll > 0.95:
        events += [
            ev.DeleteRequested(id=next(ids), actor=user, run_id=run, attempt=attempts - 1),
            ev.RunDeleted(id=next(ids), actor=user, run_id=run, attempt=attempts - 1),
        ]
    return events


def interleaved(total: int, seed: int = 1) -> Iterator[ev.AnyEvent]:
    """``total`` events as the log holds them: nodes first, then runs interleaved
    (``IN_FLIGHT`` at a time), each run's in its order."""
    rng = random.Random(seed)
    emitted, runs = 0, 0
    flight: list[list[ev.AnyEvent]] = []
    for n in range(min(NODES, total)):
        node = f"gpu-node-{n:03d}"
        yield ev.NodeRegistered(
            id=f"reg-{n}",
            actor=f"agent@{node}",
            node=node,
            cluster="r1z1",
            gpu_type="h100_80gb",
            gpus=8,
        )
        emitted += 1
    while emitted < total:
        while len(flight) < IN_FLIGHT:
            flight.append(run_events(rng, runs)[::-1])
            runs += 1
        i = rng.randrange(len(flight))
        yield flight[i].pop()
        emitted += 1
        if not flight[i]:
            flight[i] = flight[-1]
            flight.pop()


def workload(
    total: int, seed: int = 1, step_ms: int = 40
) -> Iterator[tuple[str, dict[bytes, bytes]]]:
    """``interleaved`` as log entries (position, fields), the log's clock moving 0 to
    ``step_ms`` ms from one to the next."""
    rng = random.Random(seed)
    clock, seq = START_MS, 0
    versions: dict[str, int] = {}
    for event in interleaved(total, seed):
        step = rng.randrange(0, step_ms)
        clock, seq = (clock + step, 0) if step else (clock, seq + 1)
        version = versions.get(event.aggregate, 0) + 1
        versions[event.aggregate] = version
        fields = codec.encode(event)
        fields[codec.VERSION] = str(version).encode()
        yield f"{clock}-{seq}", fields


async def fill(client: aioredis.Redis, total: int) -> int:
    """Write ``total`` entries; returns the number of runs they hold."""
    runs = 0
    pipe = client.pipeline(transaction=False)
    pending = 0
    for position, fields in workload(total):
        pipe.xadd(LOG, fields, id=position)  # type: ignore[arg-type]
        runs += fields[codec.KIND].startswith(b"run.submitted@")
        pending += 1
        if pending == 5000:
            await pipe.execute()
            pending = 0
    await pipe.execute()
    return runs


# --- measuring ------------------------------------------------------------------------------


async def decode_only(client: aioredis.Redis, page: int) -> int:
    """The baseline: read every entry and decode it, as a rebuild does, without folding."""
    reader, after, count = RedisLogReader(client), "0-0", 0
    while True:
        entries = await reader.read(after, page)
        for position, fields in entries:
            codec.recorded_from(position, cast(list[bytes], fields))
        count += len(entries)
        if len(entries) < page:
            return count
        after = entries[-1][0]


async def rebuild_all(url: str, tag: int, lanes: int | None) -> None:
    """Every projection from zero into fresh builds, as ``mcli projections rebuild`` does (not
    switched: readers are not moved)."""
    await rebuild_many(Settings(redis_url=url), NAMES, now_ms=tag, switch=False, lanes=lanes)


def fold_costs(sample: int) -> list[tuple[str, float, float]]:
    """Per fold, µs per event to apply and to render its rows once, over ``sample`` decoded
    events held in memory (no IO): where a rebuild's time goes."""
    records = [codec.recorded(position, fields) for position, fields in workload(sample)]
    gc.collect()
    gc.freeze()
    costs = []
    for projection in make_all():
        changed: set[tuple[str, str]] = set()
        mine = [r for r in records if takes(projection, type(r.event))]
        t0 = time.perf_counter()
        for record in mine:
            changed.update(projection.apply(record))
        t1 = time.perf_counter()
        for _ in projection.rows(changed):
            pass
        t2 = time.perf_counter()
        costs.append((projection.name, (t1 - t0) / sample * 1e6, (t2 - t1) / sample * 1e6))
    gc.unfreeze()
    return costs


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def checkpoint_low(client: aioredis.Redis) -> tuple[int, int] | None:
    """The lowest checkpoint over every projection's active build (None: not built yet)."""
    actives = cast(
        list[bytes | None], await client.mget([keys.projection_active(n) for n in NAMES])
    )
    names = [a.decode() for a in actives if a is not None]
    if len(names) < len(NAMES):
        return None
    values = cast(
        list[bytes | None],
        await client.mget(
            [keys.projection_checkpoint(n, a) for n, a in zip(NAMES, names, strict=True)]
        ),
    )
    found = [_pos(v.decode()) for v in values if v is not None]
    return min(found) if len(found) == len(NAMES) else None


def _pos(position: str) -> tuple[int, int]:
    ms, _, seq = position.partition("-")
    return int(ms), int(seq or 0)


async def wait_caught_up(client: aioredis.Redis, process: asyncio.subprocess.Process) -> float:
    """Seconds until the projector's every checkpoint reaches the log's last entry."""
    last = cast(list[tuple[bytes, object]], await client.xrevrange(LOG, count=1))
    end = _pos(last[0][0].decode()) if last else (0, 0)
    t0 = time.perf_counter()
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"the projector exited with {process.returncode}")
        low = await checkpoint_low(client)
        if low is not None and low >= end:
            return time.perf_counter() - t0
        await asyncio.sleep(0.01)


async def settled_rss_kib(pid: int, within_s: float = 10.0) -> int:
    """The process's RSS once it stops moving (two readings 0.5 s apart agree within 1 %): a
    projector that has caught up still lets the runs at rest go, then gives the memory back."""
    deadline = time.monotonic() + within_s
    before = rss_kib(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # allowed: RSS has no event to wait on; polled to a deadline
        now = rss_kib(pid)
        if abs(now - before) <= before // 100:
            return now
        before = now
    return before


async def start_projector(url: str, log_path: Path, **settings: str) -> asyncio.subprocess.Process:
    """``python -m services.projector`` on ``url``; ``settings``: more ``RUNPLANE_*``."""
    env = os.environ | {"RUNPLANE_REDIS_URL": url, "RUNPLANE_PROJECTOR_POLL_MS": "1000"}
    env |= {f"RUNPLANE_{name.upper()}": value for name, value in settings.items()}
    with log_path.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.projector", env=env, stdout=out, stderr=out
        )


async def lag(url: str, client: aioredis.Redis, rate: int, seconds: float) -> list[float]:
    """Append ``rate`` events/s for ``seconds``; ms from each ack to visible everywhere."""
    store = EventStore(connect(url), Settings(redis_url=url))
    events = [e for _, e in _events_for_appends(int(rate * seconds))]
    acked: list[tuple[tuple[int, int], float]] = []
    lags: list[float] = []
    writers, done = 8, asyncio.Event()

    async def writer(mine: Sequence[ev.AnyEvent], start: float, gap: float) -> None:
        for n, event in enumerate(mine):
            delay = start + n * gap - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            appended = await store.append([event], expected_version=None)
            acked.append((_pos(appended.positions[0]), time.perf_counter()))

    async def watcher() -> None:
        while not done.is_set() or acked:
            low = await checkpoint_low(client)
            now = time.perf_counter()
            if low is not None:
                keep = []
                for position, at in acked:
                    if position <= low:
                        lags.append((now - at) * 1000)
                    else:
                        keep.append((position, at))
                acked[:] = keep
            await asyncio.sleep(0.001)

    watch = asyncio.create_task(watcher())
    start = time.perf_counter() + 0.1
    await asyncio.gather(
        *(writer(events[w::writers], start + w / rate, writers / rate) for w in range(writers))
    )
    done.set()
    async with asyncio.timeout(60):
        await watch
    await store.close()
    return lags


def _events_for_appends(count: int) -> Iterator[tuple[str, ev.AnyEvent]]:
    """Whole runs for the lag test, as events (the log stamps time and version)."""
    rng, index, made = random.Random(9), 10_000_000, 0
    while made < count:
        for event in run_events(rng, index):
            if made == count:
                return
            made += 1
            yield "", event
        index += 1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace, url: str, workdir: Path) -> int:
    client = connect(url)
    missed: list[str] = []
    total = args.events
    print(f"filling {total:,} events ...", flush=True)
    t0 = time.perf_counter()
    runs = await fill(client, total)
    print(f"  {runs:,} runs, {time.perf_counter() - t0:.1f} s", flush=True)

    lanes = plan(NAMES, args.lanes or default_lanes(NAMES))
    print(
        f"rebuild of all projections ({len(lanes)} lanes: "
        f"{' | '.join(', '.join(lane) for lane in lanes)}) vs decoding only ...",
        flush=True,
    )
    rebuilds, decodes = [], []
    for round_ in range(args.rounds):
        t0 = time.perf_counter()
        assert await decode_only(client, 5000) == total
        decodes.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await rebuild_all(url, round_, args.lanes)
        rebuilds.append(time.perf_counter() - t0)
        for name in NAMES:
            await RedisStore(client).drop(name, f"v1r{round_}")
    rebuild_s, decode_s = statistics.median(rebuilds), statistics.median(decodes)
    limit = REBUILD_GOAL_S_PER_M * total / 1_000_000
    if rebuild_s >= limit:
        missed.append("rebuild")
    print(
        f"  rebuild:   {total / rebuild_s:>10,.0f} events/s  ({rebuild_s:.2f} s; "
        f"goal < {limit:g} s: {'PASS' if rebuild_s < limit else 'FAIL'})"
        f"{'  rounds: ' + ', '.join(f'{r:.2f}' for r in rebuilds) if len(rebuilds) > 1 else ''}\n"
        f"  decode:    {total / decode_s:>10,.0f} events/s  ({decode_s:.2f} s)\n"
        f"  ratio rebuild / decode-only: {decode_s / rebuild_s:.2f}",
        flush=True,
    )

    sample = min(total, 100_000)
    print(f"  in memory, per event, over {sample:,} events (apply + render once):", flush=True)
    for name, apply_us, rows_us in fold_costs(sample):
        print(f"    {name:<12} {apply_us:5.2f} + {rows_us:5.2f} µs", flush=True)

    empty_url = url.rsplit("/", 1)[0] + "/1"  # another database: an empty log
    empty, empty_client = (
        await start_projector(empty_url, workdir / "empty.log"),
        connect(empty_url),
    )
    await wait_caught_up(empty_client, empty)
    base_kib = await settled_rss_kib(empty.pid)
    await stop(empty)
    await empty_client.aclose()
    projector = await start_projector(url, workdir / "projector.log")
    catch_up = await wait_caught_up(client, projector)
    full_kib = await settled_rss_kib(projector.pid)
    print(
        f"projector process: caught up with {total:,} events in {catch_up:.2f} s "
        f"({total / catch_up:,.0f} events/s, incl. start-up)\n"
        f"  memory: {full_kib / 1024:,.0f} MiB RSS, {base_kib / 1024:,.0f} MiB on an empty log:"
        f" {(full_kib - base_kib) / 1024 / runs * 100_000:,.0f} MiB per 100,000 runs",
        flush=True,
    )

    print(f"lag at {args.rate:,} events/s for {args.seconds:g} s ...", flush=True)
    lags = await lag(url, client, args.rate, args.seconds)
    p99 = percentile(lags, 0.99)
    if p99 >= LAG_GOAL_MS:
        missed.append("lag")
    print(
        f"  {len(lags):,} appends: p50 {percentile(lags, 0.5):.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(lags):.1f} ms (goal p99 < {LAG_GOAL_MS:g} ms: "
        f"{'PASS' if p99 < LAG_GOAL_MS else 'FAIL'})",
        flush=True,
    )
    await stop(projector)
    await client.aclose()
    # A missed goal is a figure to report, not a failure of the bench: the benches after this
    # one in `make bench` still run. Errors (a crash, a timeout) still end it non-zero.
    print(f"goals missed: {', '.join(missed)}" if missed else "every goal met", flush=True)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.projections", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log")
    parser.add_argument("--rounds", type=int, default=1, help="rebuild rounds (median)")
    parser.add_argument(
        "--lanes", type=int, default=None, help="rebuild processes (default: one per core)"
    )
    parser.add_argument("--rate", type=int, default=2000, help="appends/s in the lag test")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag test")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return on_a_server("projections", lambda server, workdir: run(args, server.url, workdir))


if __name__ == "__main__":
    sys.exit(main())
