"""Throughput of the log-collector: output lines stored per second against raw ``XADD``.

Run ``python -m bench.logs`` (200,000 lines, 3 rounds; under a minute). Every figure is a ratio
against a baseline measured in the same run, on the same server:

- baseline: the same ingest entries (``services.output.ingest.ingest_fields``, 8 ranks) appended
  with raw pipelined ``XADD`` (1000 per round trip, one client) to a scratch stream: the rate at
  which one writer can put lines on the server at all;
- backlog: the lines are on the ingest stream before the collector starts; lines/s from the
  moment it holds its lease until every line is in its rank's stream;
- flood: the collector runs while one writer floods the ingest stream as fast as it can; lines/s
  from the first line sent until every line is stored, and how far behind the collector was
  when the writer finished.

The collector is a real process (``python -m services.log_collector``). By default the server is
a fresh ``valkey-server`` (``appendonly yes``, ``appendfsync always``) in a temp dir;
``--redis-url`` uses an existing one, whose database must be empty (it is written and flushed).
Each figure is the median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from events import keys
from services.core.valkey import ValkeyProcess
from services.output import ingest

RANKS = 8
PIPELINE = 1000
LINE = b"step %d | loss 2.3456 | lr 3.0e-4 | tokens/s 12345.6 | grad_norm 0.98"


@dataclass
class Round:
    baseline: float
    backlog: float
    flood: float
    flood_lag_s: float


def _entries(run_id: str, count: int) -> list[dict[bytes, bytes]]:
    return [
        ingest.ingest_fields(run_id, 0, i % RANKS, ingest.STDOUT, LINE % i) for i in range(count)
    ]


async def _send(client: aioredis.Redis, stream: str, entries: list[dict[bytes, bytes]]) -> None:
    for start in range(0, len(entries), PIPELINE):
        pipe = client.pipeline(transaction=False)
        for fields in entries[start : start + PIPELINE]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        await pipe.execute()


async def _stored(client: aioredis.Redis, run_id: str) -> int:
    pipe = client.pipeline(transaction=False)
    for rank in range(RANKS):
        pipe.xlen(keys.rank_log(run_id, 0, rank))
    return sum(await pipe.execute())


async def _until_stored(client: aioredis.Redis, run_id: str, count: int) -> float:
    deadline = time.monotonic() + 600
    while await _stored(client, run_id) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the collector stored {await _stored(client, run_id)} of {count}")
        await asyncio.sleep(0.005)
    return time.perf_counter()


async def _clear(client: aioredis.Redis, run_id: str) -> None:
    await client.delete(*(keys.rank_log(run_id, 0, rank) for rank in range(RANKS)))
    await client.delete(keys.attempt_logs(run_id, 0))


async def _active(client: aioredis.Redis) -> float:
    while await client.get(keys.log_collector_lease()) != b"bench":  # noqa: ASYNC110 - another process
        await asyncio.sleep(0.005)
    return time.perf_counter()


async def _round(url: str, count: int, archive_dir: Path, index: int) -> Round:
    client = aioredis.Redis.from_url(url)
    try:
        scratch = f"bench:raw:{index}"
        entries = _entries(f"backlog-{index}", count)
        began = time.perf_counter()
        await _send(client, scratch, entries)
        baseline = count / (time.perf_counter() - began)
        await client.delete(scratch)

        await _send(client, keys.log_ingest(), entries)  # the backlog, before the collector
        env = {
            **os.environ,
            "RUNPLANE_REDIS_URL": url,
            "RUNPLANE_ARCHIVE_DIR": str(archive_dir),
            "RUNPLANE_COLLECTOR_NAME": "bench",
            "RUNPLANE_INGEST_BLOCK_MS": "50",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.log_collector",
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            began = await _active(client)
            backlog = count / (await _until_stored(client, f"backlog-{index}", count) - began)

            flood_run = f"flood-{index}"
            entries = _entries(flood_run, count)
            began = time.perf_counter()
            await _send(client, keys.log_ingest(), entries)
            sent = time.perf_counter()
            done = await _until_stored(client, flood_run, count)
            flood = count / (done - began)
        finally:
            proc.terminate()
            await proc.wait()
        await _clear(client, f"backlog-{index}")
        await _clear(client, flood_run)
        await client.delete(keys.log_collector_lease())
        return Round(baseline, backlog, flood, done - sent)
    finally:
        await client.aclose()


async def _bench(url: str, count: int, rounds: int) -> list[Round]:
    client = aioredis.Redis.from_url(url)
    try:
        if await client.dbsize():
            raise SystemExit(f"the database at {url} is not empty: the benchmark flushes it")
        info = await client.info("server")
        persistence = await client.config_get("appendfsync")
    finally:
        await client.aclose()
    name = info.get("server_name", "redis")
    version = info.get("valkey_version", info.get("redis_version"))
    print(
        f"log-collector: {count:,} lines of ~{len(LINE)} bytes over {RANKS} ranks, {rounds} rounds,"
        f" {name} {version} (appendonly, appendfsync {persistence.get('appendfsync')})"
    )
    with tempfile.TemporaryDirectory() as archive:
        results = [await _round(url, count, Path(archive), index) for index in range(rounds)]
    flushing = aioredis.Redis.from_url(url)
    await flushing.flushdb()
    await flushing.aclose()
    return results


def _report(results: list[Round]) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    baseline = median([r.baseline for r in results])
    backlog = median([r.backlog for r in results])
    flood = median([r.flood for r in results])
    lag = median([r.flood_lag_s for r in results])
    print(f"  raw XADD, 1 writer, pipelines of {PIPELINE}:   {baseline:>10,.0f} lines/s")
    print(
        f"  collector, draining a backlog:            {backlog:>10,.0f} lines/s stored"
        f"  (ratio {backlog / baseline:.2f})"
    )
    print(
        f"  collector, under a flood from 1 writer:   {flood:>10,.0f} lines/s stored"
        f"  (ratio {flood / baseline:.2f}; {lag:.2f} s behind when the writer stopped)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    if args.redis_url:
        results = asyncio.run(_bench(args.redis_url, args.lines, args.rounds))
    else:
        with tempfile.TemporaryDirectory() as data, ValkeyProcess(Path(data)) as server:
            results = asyncio.run(_bench(server.url, args.lines, args.rounds))
    _report(results)


if __name__ == "__main__":
    main()
