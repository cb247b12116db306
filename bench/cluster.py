"""Throughput of the event log on a Valkey Cluster: ``EventStore.append`` against raw ``XADD``
on the same cluster, and how each scales from 1 shard to 3.

Run ``python -m bench.cluster`` (shards 1 and 3, a replica each, 32 writers) or ``--quick``
(the CI smoke). For each shard count a fresh cluster is formed in a temp dir
(``services.core.valkey_cluster``: AOF with ``appendfsync always`` on every node, as the
launcher runs it; the ACL file's users, passwords drawn for the run), then, best of
``--rounds`` rounds of ``--appends`` writes from ``--writers`` concurrent writers:

- ``XADD``: the encoded event, raw, to its partition's global stream (``keys.log_stream``),
  so the writes spread over the shards exactly as the appends do: the baseline;
- ``XADD + WAIT 1``: the same, each followed by ``WAIT 1`` on the same connection (one
  pipeline, as ``client.wait_after`` sends it): what a replicated append is held to; only with
  replicas;
- ``EventStore.append``: one ``RunSubmitted`` of a new run per call (``expected_version=0``,
  as the API submits), with ``append_replicas`` = min(replicas, 1).

Every figure is a ratio against a baseline of the same run, on the same cluster, through the
same client: append/XADD and append/(XADD+WAIT) per shard count, and each line's scaling
(the most shards over the fewest). The writers log in as the scheduler, the service that
appends most; the operator forms the cluster and reads its counters. The shards run on this
machine's cores beside the client: on a 2-core machine the scaling is bounded by the cores,
not by the design. The partitions (``--partitions``) decide how evenly the shards share the
writes; the report prints the share of the busiest shard, which bounds the scaling too.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from redis.crc import key_slot

from bench import workload
from bench.log import (
    Sample,
    Work,
    _best,
    append_store,
    machine_busy,
    server_banner,
    table,
    timed,
)
from events import codec, keys
from events.model import Event
from services.core import acl
from services.core.client import check_replicated, connect, connect_with, wait_after
from services.core.passwords import (
    REPLICATION_CONF,
    acl_path,
    password_file,
    provision,
    read_password,
)
from services.core.settings import Auth, Settings
from services.core.store import EventStore
from services.core.valkey import Login, ReplyError, call, info
from services.core.valkey_cluster import Layout, NodeStatus, ValkeyCluster

#: 22 partitions fall 6/8/8 on three shards: the most even spread of any count up to 48 (12,
#: say, falls 3/3/6, and puts half the writes on one shard).
PARTITIONS = 22
XADD, XADD_WAIT, APPEND = "XADD", "XADD + WAIT 1", "EventStore.append"
_QUIET_TIMEOUT_S = 60.0


@dataclass
class Shape:
    """What one cluster measured: its samples per line, and how the writes spread."""

    shards: int
    replicas: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    shares: list[float] = field(default_factory=list)  # of the writes, per shard
    partitions: list[int] = field(default_factory=list)  # per shard
    banner: str = ""

    def rate(self, line: str) -> float:
        return _best(self.samples[line]).rate


class Cluster:
    """A cluster formed for the bench in ``directory``: the ACL file's users, the operator
    forming it and reading its counters, the writers logging in as the scheduler."""

    def __init__(self, directory: Path, shards: int, replicas: int) -> None:
        secrets = directory / "secrets"
        provision(secrets)
        self.secrets = secrets
        self.operator: Login = (acl.OPERATOR, password_file(secrets, acl.OPERATOR))
        self.cluster = ValkeyCluster(
            directory / "cluster",
            Layout.new(shards, replicas),
            acl_file=acl_path(secrets),
            login=self.operator,
            replication=(acl.REPLICATION, password_file(secrets, acl.REPLICATION)),
            replication_conf=secrets / REPLICATION_CONF,
        )

    def operator_auth(self) -> Auth:
        return Auth(acl.OPERATOR, read_password(password_file(self.secrets, acl.OPERATOR)))

    def settings(self, partitions: int, replicas: int) -> Settings:
        return Settings(
            redis_url=self.cluster.url,
            redis_cluster=True,
            redis_username=acl.SCHEDULER,
            redis_password_file=password_file(self.secrets, acl.SCHEDULER),
            partitions=partitions,
            append_replicas=min(replicas, 1),
        )

    def primaries(self) -> list[NodeStatus]:
        found = [n for n in self.cluster.status() if n.role == "primary" and n.slots]
        return sorted(found, key=lambda node: node.slots[0][0])

    async def counters(self) -> tuple[float, int]:
        """CPU seconds every node used so far, and the primaries' AOF bytes."""
        cpu, aof = 0.0, 0
        for port in self.cluster.ports:
            used = info(port, self.operator, "cpu")
            cpu += float(used["used_cpu_user"]) + float(used["used_cpu_sys"])
        for node in self.primaries():
            aof += int(info(node.port, self.operator, "persistence").get("aof_current_size", 0))
        return cpu, aof

    async def quiet(self) -> None:
        """Until no node rewrites its AOF or has one scheduled (it forks, and takes a core)."""
        deadline = time.monotonic() + _QUIET_TIMEOUT_S
        while time.monotonic() < deadline:
            busy = False
            for port in self.cluster.ports:
                persistence = info(port, self.operator, "persistence")
                busy |= persistence.get("aof_rewrite_in_progress", "0") != "0"
                busy |= persistence.get("aof_rewrite_scheduled", "0") != "0"
            if not busy:
                return
            await asyncio.sleep(0.1)  # allowed: polling inside a deadline loop

    def without_function(self) -> list[int]:
        """The shards whose primary has no ``runplane`` library (the append function)."""
        missing = []
        for shard, node in enumerate(self.primaries()):
            try:
                listed = call(
                    node.port, self.operator, "FUNCTION", "LIST", "LIBRARYNAME", "runplane"
                )
            except ReplyError:
                listed = None
            if not listed:
                missing.append(shard)
        return missing

    async def measure(self, ops: int, work: Work) -> Sample:
        """Run ``work`` once, timed; it returns how many writes it did (checked)."""
        await self.quiet()
        return await timed(ops, work, self.counters)


async def xadd_spread(
    client: Any, entries: Sequence[tuple[str, workload.Fields]], writers: int, *, wait: bool
) -> int:
    """Each entry ``(stream, fields)`` XADDed raw, from ``writers`` writers; with ``wait``,
    each in one pipeline with the WAIT a replicated append sends (``client.wait_after``)."""

    async def writer(mine: Sequence[tuple[str, workload.Fields]]) -> int:
        for stream, fields in mine:
            if not wait:
                await client.xadd(stream, fields)
                continue
            pipe = client.pipeline(transaction=False)
            pipe.xadd(stream, fields)
            waits = await wait_after(pipe, client, [stream])
            _, *waited = await pipe.execute(raise_on_error=False)
            check_replicated(client, waited[:waits])
        return len(mine)

    return sum(await asyncio.gather(*(writer(entries[w::writers]) for w in range(writers))))


def submissions(count: int) -> list[Event]:
    """``count`` appends, each a new run's ``RunSubmitted``."""
    return [workload.run_submitted(i) for i in range(count)]


def raw_entries(events: Sequence[Event], partitions: int) -> list[tuple[str, workload.Fields]]:
    """Each event encoded as the log holds it, with its partition's global stream."""
    return [
        (keys.log_stream(keys.partition_of(e.aggregate, partitions)), codec.encode(e))
        for e in events
    ]


def spread(
    events: Sequence[Event], partitions: int, primaries: Sequence[NodeStatus]
) -> tuple[list[int], list[float]]:
    """Per shard: how many partitions it holds and its share of ``events``' writes."""

    def shard_of(partition: int) -> int:
        slot = key_slot(keys.log_stream(partition).encode())
        return next(i for i, node in enumerate(primaries) for a, b in node.slots if a <= slot <= b)

    shard = [shard_of(p) for p in range(partitions)]
    writes = [0] * len(primaries)
    for event in events:
        writes[shard[keys.partition_of(event.aggregate, partitions)]] += 1
    held = [shard.count(i) for i in range(len(primaries))]
    return held, [n / max(len(events), 1) for n in writes]


async def measure_shape(args: argparse.Namespace, shards: int) -> Shape:
    """Form a cluster of ``shards`` shards, take every line's rounds, stop it."""
    shape = Shape(shards, args.replicas)
    lines = [XADD, *([XADD_WAIT] if args.replicas else []), APPEND]
    with tempfile.TemporaryDirectory(prefix="runplane-bench-cluster-") as directory:
        bench = Cluster(Path(directory), shards, args.replicas)
        t0 = time.perf_counter()
        with bench.cluster:
            print(
                f"{shards} shard{'s' if shards > 1 else ''} x {1 + args.replicas} nodes formed "
                f"in {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
            settings = bench.settings(args.partitions, args.replicas)
            store = EventStore(connect_with(settings, 2 * args.writers), settings)
            client: Any = store.redis
            try:
                operator = connect(bench.cluster.url, auth=bench.operator_auth())
                try:
                    shape.banner = await server_banner(operator)
                finally:
                    await operator.aclose()
                await store.load_function()
                missing = bench.without_function()
                if missing:
                    raise AssertionError(f"the append function is not on shard(s) {missing}")
                # warm up: every node's connections, the function, the disks' caches
                warm = submissions(4 * args.writers)
                await append_store(store, warm, args.writers, checked=True)
                entries = raw_entries(submissions(4 * args.writers), args.partitions)
                await xadd_spread(client, entries, args.writers, wait=bool(args.replicas))
                for round_ in range(args.rounds):
                    events = submissions(args.appends)
                    # the same events raw: the XADDs fall on the shards as the appends do
                    entries = raw_entries(events, args.partitions)
                    if round_ == 0:
                        shape.partitions, shape.shares = spread(
                            events, args.partitions, bench.primaries()
                        )
                    works: dict[str, Work] = {
                        XADD: functools.partial(
                            xadd_spread, client, entries, args.writers, wait=False
                        ),
                        XADD_WAIT: functools.partial(
                            xadd_spread, client, entries, args.writers, wait=True
                        ),
                        APPEND: functools.partial(
                            append_store, store, events, args.writers, checked=True
                        ),
                    }
                    turn = round_ % len(lines)  # each line goes first in turn
                    for line in lines[turn:] + lines[:turn]:
                        sample = await bench.measure(args.appends, works[line])
                        shape.samples.setdefault(line, []).append(sample)
                if bench.without_function():
                    raise AssertionError("the append function went missing from a shard")
            finally:
                await store.close()
    _progress(shape, lines)
    return shape


def _progress(shape: Shape, lines: Sequence[str]) -> None:
    rates = ", ".join(f"{line} {shape.rate(line):,.0f}/s" for line in lines)
    print(f"  {shape.shards} shard{'s' if shape.shards > 1 else ''}: {rates}", flush=True)


# --- reporting -----------------------------------------------------------------------------


def _lines(shape: Shape) -> list[str]:
    return [line for line in (XADD, XADD_WAIT, APPEND) if line in shape.samples]


def rate_rows(shapes: Sequence[Shape]) -> list[list[str]]:
    rows = []
    for shape in shapes:
        for line in _lines(shape):
            best = _best(shape.samples[line])
            vs_wait = (
                f"{best.rate / shape.rate(XADD_WAIT):.2f}" if XADD_WAIT in shape.samples else "-"
            )
            rows.append(
                [
                    str(shape.shards),
                    line,
                    f"{best.rate:,.0f}",
                    f"{best.rate / shape.rate(XADD):.2f}",
                    vs_wait,
                    f"{best.client_cpu / best.ops * 1e6:.0f}",
                    f"{best.server_cpu / best.ops * 1e6:.0f}",
                    f"{best.aof_bytes / best.ops:,.0f}",
                    f"{best.others:.2f}",
                ]
            )
    return rows


def scaling_rows(shapes: Sequence[Shape]) -> list[list[str]]:
    first, last = shapes[0], shapes[-1]
    return [
        [
            line,
            f"{first.rate(line):,.0f}",
            f"{last.rate(line):,.0f}",
            f"{last.rate(line) / first.rate(line):.2f}",
        ]
        for line in _lines(first)
        if line in last.samples
    ]


def report(args: argparse.Namespace, shapes: Sequence[Shape]) -> None:
    print()
    print(
        f"appends/s, best of {args.rounds} rounds of {args.appends:,} from {args.writers} writers; "
        f"ratios against the baselines of the same cluster"
    )
    header = [
        "shards",
        "line",
        "writes/s",
        "/ XADD",
        "/ XADD+WAIT",
        "client µs/op",
        "server µs/op",
        "AOF B/op",
        "other load",
    ]
    print(table(rate_rows(shapes), header, {0, 2, 3, 4, 5, 6, 7, 8}))
    print(
        "server µs/op: CPU of every node (primaries and replicas); AOF B/op: the primaries'; "
        "other load: CPUs busy with other processes meanwhile"
    )
    for shape in shapes:
        held = "/".join(str(n) for n in shape.partitions)
        shares = "/".join(f"{share:.0%}" for share in shape.shares)
        print(
            f"{shape.shards} shard{'s' if shape.shards > 1 else ''}: partitions per shard {held}, "
            f"share of the writes {shares}"
        )
    if len(shapes) < 2:
        return
    first, last = shapes[0], shapes[-1]
    print()
    print(f"scaling: writes/s with {last.shards} shards over {first.shards}")
    header = ["line", f"{first.shards} shard(s)", f"{last.shards} shards", "scaling"]
    print(table(scaling_rows(shapes), header, {1, 2, 3}))
    bound = 1 / max(last.shares) if last.shares else float("nan")
    cores = os.cpu_count() or 1
    print(
        f"the most the spread allows: {bound:.2f}x (the busiest shard takes "
        f"{max(last.shares):.0%} of the writes)"
    )
    print(
        f"this machine has {cores} CPU{'s' if cores > 1 else ''}: the {last.shards} shards' "
        f"{last.shards * (1 + last.replicas)} nodes and the client share them, so the scaling "
        f"figure is bounded by the cores rather than by the design"
    )


# --- main ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    print(
        f"runplane cluster log benchmark: python {platform.python_version()}, "
        f"redis-py {version('redis')}; writers log in as {acl.SCHEDULER!r}"
    )
    print(f"machine: {os.cpu_count()} CPUs, shared by the client and every node; {machine_busy()}")
    print(
        f"shards {', '.join(map(str, args.shards))}, {args.replicas} replica(s) each, "
        f"{args.partitions} partitions, {args.writers} writers, {args.appends:,} writes per "
        f"round, best of {args.rounds}",
        flush=True,
    )
    shapes = [await measure_shape(args, shards) for shards in args.shards]
    print(f"server: {shapes[0].banner}")
    report(args, shapes)
    return 0


def _shards(text: str) -> list[int]:
    try:
        found = [int(word) for word in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of shard counts: {text!r}") from None
    if not found or min(found) < 1:
        raise argparse.ArgumentTypeError(f"shard counts must be 1 or more: {text!r}")
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=doc.split("\n")[0])
    parser.add_argument("--shards", type=_shards, default=[1, 3], help="shard counts (1,3)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas per shard (default 1)")
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers (default 32)")
    parser.add_argument("--appends", type=int, help="writes per round and line")
    parser.add_argument("--rounds", type=int, help="rounds per line (the fastest shown)")
    parser.add_argument(
        "--partitions", type=int, default=PARTITIONS, help=f"partitions (default {PARTITIONS})"
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: few writes, 1 round")
    args = parser.parse_args(argv)
    args.appends = args.appends or (300 if args.quick else 10_000)
    args.rounds = args.rounds or (1 if args.quick else 5)
    if min(args.writers, args.appends, args.rounds, args.partitions) < 1 or args.replicas < 0:
        parser.error("counts must be positive (replicas 0 or more)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
