"""The read API over the stored projections: what the CLI and the SDK call.

Every read first looks up the projection's active build, then reads that build's rows, so a
switch to a new build (a new fold version, a rebuild) is one pointer change for readers. A
projection that was never built reads as empty. Times are ms since the epoch; ``now`` is passed
in by the caller (the CLI's clock), never read here.

The rows of archived runs leave Valkey for Parquet (``projections.cold``): a read takes a run
Valkey lacks from there, and a listing or a report merges them in, so an archived run reads
exactly as it did.
"""

from __future__ import annotations

import asyncio
import fnmatch
import heapq
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec
import redis.asyncio as aioredis

from events import codec, keys
from events.errors import UndecodableEvent
from events.model import RunEvent
from events.status import RunStatus
from projections import billing
from projections.attempts import AttemptRow
from projections.audit import Entry, entry_of, refusals_index
from projections.base import Row
from projections.billing import BilledAttempt, GroupBy, Report, Total
from projections.cold import ColdRows, anchors
from projections.reader import LogReader, RedisLogReader, each
from projections.run_status import RunRow
from projections.utilization import (
    ClusterUtilization,
    Instance,
    NodeLine,
    QueuedRun,
    RunLine,
    queue_order,
)

T = TypeVar("T")
_CHUNK = 200
_MAX_SEQ = 2**64 - 1  # the largest sequence number of a log position


class Page(msgspec.Struct, kw_only=True):
    runs: list[RunRow]
    #: Pass back as ``cursor`` for the next page; None when this is the last one.
    next_cursor: str | None = None


class _Namespace:
    def __init__(self, client: aioredis.Redis, name: str, namespace: str) -> None:
        self.client, self.name, self.namespace = client, name, namespace

    def rows_key(self, kind: str) -> str:
        return keys.projection_rows(self.name, self.namespace, kind)

    def index_key(self, index: str) -> str:
        return keys.projection_index(self.name, self.namespace, index)

    async def get(self, kind: str, row_id: str, type_: type[T]) -> T | None:
        raw = cast(bytes | None, await self.client.hget(self.rows_key(kind), row_id))
        return None if raw is None else msgspec.json.decode(raw, type=type_)

    async def many(self, kind: str, ids: Sequence[str | bytes], type_: type[T]) -> list[T]:
        if not ids:
            return []
        raws = cast(list[bytes | None], await self.client.hmget(self.rows_key(kind), list(ids)))
        return [msgspec.json.decode(raw, type=type_) for raw in raws if raw is not None]

    async def all(self, kind: str, type_: type[T]) -> list[T]:
        found: list[T] = []
        async for _, raw in self.client.hscan_iter(self.rows_key(kind), count=1000):
            found.append(msgspec.json.decode(raw, type=type_))
        return found

    async def members(self, index: str) -> list[bytes]:
        return cast(list[bytes], await self.client.zrange(self.index_key(index), 0, -1))

    async def cold(self) -> ColdRows | None:
        """The cold rows, if any run's rows left Valkey."""
        root = cast(bytes | None, await self.client.get(keys.cold_rows()))
        return None if root is None else ColdRows(Path(root.decode()))

    async def cold_runs(self, runs: Sequence[str]) -> dict[str, list[Row]]:
        """The rows in this build of those of ``runs`` that are cold, by run (the others,
        warm or unknown, are not in the result)."""
        cold = await self.cold()
        if cold is None or not runs:
            return {}
        gone = await self.gone(runs)
        return await asyncio.to_thread(cold.runs, self.name, self.namespace, gone) if gone else {}

    async def cold_of_kind(self, kind: str) -> dict[str, list[Row]]:
        """Every cold run's rows of ``kind`` in this build, by run."""
        cold = await self.cold()
        if cold is None:
            return {}
        found = await asyncio.to_thread(cold.of_kind, self.name, self.namespace, kind)
        gone = set(await self.gone(list(found)))
        return {run: rows for run, rows in found.items() if run in gone}

    async def gone(self, runs: Sequence[str]) -> list[str]:
        """Of ``runs``, those this build holds none of the ``anchors`` of: cold here (or
        unknown)."""
        found: list[str] = []
        for at in range(0, len(runs), _CHUNK * 5):
            chunk = list(runs[at : at + _CHUNK * 5])
            kinds = [kind for kind, _ in anchors(self.name, "")]
            async with self.client.pipeline(transaction=False) as pipe:
                for n, kind in enumerate(kinds):  # an HMGET per kind of anchor
                    pipe.hmget(self.rows_key(kind), [anchors(self.name, r)[n][1] for r in chunk])
                there = cast(list[list[bytes | None]], await pipe.execute())
            found += [run for n, run in enumerate(chunk) if not any(b[n] for b in there)]
        return found


async def _active(client: aioredis.Redis, name: str) -> _Namespace | None:
    namespace = cast(bytes | None, await client.get(keys.projection_active(name)))
    if namespace is None:
        return None
    return _Namespace(client, name, namespace.decode())


# --- runs ----------------------------------------------------------------------------------


async def get_run(client: aioredis.Redis, run: str) -> RunRow | None:
    """A run by name or run_uid (deleted runs too), or None."""
    ns = await _active(client, "run_status")
    if ns is None:
        return None
    row = await ns.get("run", run, RunRow)
    if row is None and (uid := await ns.get("name", run, str)) is not None:
        row = await ns.get("run", uid, RunRow)
    if row is None and (cold := await ns.cold()) is not None:
        row = await asyncio.to_thread(_cold_run, cold, ns.namespace, run)
    return row


async def run_named(client: aioredis.Redis, name: str) -> str | None:
    """The run_uid of the run named ``name`` (deleted runs too, cold ones too), or None."""
    ns = await _active(client, "run_status")
    if ns is None:
        return None
    if (uid := await ns.get("name", name, str)) is not None:
        return uid
    if (cold := await ns.cold()) is not None:
        return await asyncio.to_thread(cold.named, ns.namespace, name)
    return None


def _cold_run(cold: ColdRows, namespace: str, run: str) -> RunRow | None:
    """A cold run by run_uid or name (``get_run`` found neither in Valkey)."""
    for uid in (run, cold.named(namespace, run)):
        if uid is None:
            continue
        for row in cold.runs("run_status", namespace, [uid]).get(uid, []):
            if row.kind == "run" and row.body is not None:
                return msgspec.json.decode(row.body, type=RunRow)
    return None


def valid_cursor(cursor: str) -> bool:
    """True if ``cursor`` has the shape ``list_runs`` gives (``<created_at>:<run_uid>``)."""
    score, sep, run_uid = cursor.partition(":")
    return bool(sep and score.isdigit() and run_uid)


async def list_runs(
    client: aioredis.Redis,
    *,
    user: str | None = None,
    cluster: str | None = None,
    statuses: Iterable[RunStatus] | None = None,
    names: Sequence[str] | None = None,
    gpu_type: str | None = None,
    after: int | None = None,
    before: int | None = None,
    include_deleted: bool = False,
    parent: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Runs newest first (by created_at), filtered, ``limit`` per page; ``parent``: the
    children of the run of that name.

    ``names`` are globs (``hello-*``); ``after``/``before`` bound created_at (inclusive,
    exclusive). The cursor is ``<created_at>:<run_uid>`` of the last run of the previous page.
    """
    ns = await _active(client, "run_status")
    if ns is None:
        return Page(runs=[])
    wanted = set(statuses) if statuses is not None else None
    keep = _Filter(user, cluster, wanted, names, gpu_type, include_deleted, parent)
    if parent is not None:
        index = f"parent:{parent}"
    elif user is not None:
        index = f"user:{user}"
    elif cluster is not None:
        index = f"cluster:{cluster}"
    elif wanted is not None and len(wanted) == 1:
        index = f"status:{next(iter(wanted))}"
    else:
        index = "created"
    high: float = float("inf") if before is None else before - 1
    tie: bytes | None = None
    if cursor is not None:
        score_text, _, tie_text = cursor.partition(":")
        high, tie = min(high, float(score_text)), tie_text.encode()
    low: float = float("-inf") if after is None else after
    start = (high, tie)
    found: list[RunRow] = []
    while len(found) <= limit:
        chunk = cast(
            list[tuple[bytes, float]],
            await client.zrevrangebyscore(
                ns.index_key(index), high, low, start=0, num=_CHUNK, withscores=True
            ),
        )
        # Ties on created_at are ordered by id, descending: skip up to the cursor's id.
        ids = [m for m, score in chunk if tie is None or score != high or m < tie]
        found += [row for row in await ns.many("run", ids, RunRow) if keep(row)]
        if len(chunk) < _CHUNK:
            break
        tie, high = chunk[-1]
    if (cold := await ns.cold()) is not None:
        found += await _cold_listed(ns, cold, keep=keep, bounds=(low, start), limit=limit)
        found.sort(key=lambda row: (row.created_at, row.run_uid), reverse=True)
    page = found[:limit]
    if len(found) <= limit:
        return Page(runs=page)
    return Page(runs=page, next_cursor=f"{page[-1].created_at}:{page[-1].run_uid}")


async def _cold_listed(
    ns: _Namespace,
    cold: ColdRows,
    *,
    keep: _Filter,
    bounds: tuple[float, tuple[float, bytes | None]],
    limit: int,
) -> list[RunRow]:
    """The first ``limit`` + 1 cold runs of a listing (newest first) that ``keep`` keeps,
    created from ``bounds[0]`` on and before ``bounds[1]`` (the page's start: a score and the
    cursor's run, ties after it)."""
    low, (high, tie) = bounds
    namespace = ns.namespace
    want = limit + 1
    while True:  # the newest ``want`` cold runs, more if the filter kept too few of them
        listed = await asyncio.to_thread(cold.created, namespace, low, high, want)
        after = [r for created, r in listed if tie is None or created != high or r.encode() < tie]
        found: list[RunRow] = []
        for at in range(0, len(after), _CHUNK):
            chunk = after[at : at + _CHUNK]
            gone = await ns.gone(chunk)  # a run that came back is listed from Valkey
            rows = await asyncio.to_thread(cold.runs, "run_status", namespace, gone)
            for run in gone:
                body = next((r.body for r in rows.get(run, []) if r.kind == "run"), None)
                if body is not None and keep(row := msgspec.json.decode(body, type=RunRow)):
                    found.append(row)
            if len(found) > limit:
                return found
        if len(listed) < want:
            return found  # every cold run in the bounds was looked at
        want *= 4


@dataclass(frozen=True)
class _Filter:
    user: str | None
    cluster: str | None
    statuses: set[RunStatus] | None
    names: Sequence[str] | None
    gpu_type: str | None
    include_deleted: bool
    parent: str | None

    def __call__(self, row: RunRow) -> bool:
        return (
            (self.include_deleted or not row.is_deleted)
            and (self.parent is None or row.parent == self.parent)
            and (self.user is None or row.created_by == self.user)
            and (self.cluster is None or row.requested_cluster == self.cluster)
            and (self.statuses is None or row.status in self.statuses)
            and (self.gpu_type is None or row.gpu_type == self.gpu_type)
            and (self.names is None or any(fnmatch.fnmatchcase(row.name, g) for g in self.names))
        )


async def attempts(client: aioredis.Redis, run: str) -> list[AttemptRow]:
    """Every attempt of a run (by name or run_uid), in order."""
    ns = await _active(client, "attempts")
    found = await get_run(client, run)
    run_id = found.run_uid if found is not None else run
    if ns is None:
        return []
    return (await attempts_of(client, [run_id]))[run_id]


async def attempts_of(
    client: aioredis.Redis, run_ids: Sequence[str]
) -> dict[str, list[AttemptRow]]:
    """Every attempt of each run (by run_uid), in order: one round trip for the indexes, one
    for the rows, however many runs (a listing's page)."""
    found: dict[str, list[AttemptRow]] = {run_id: [] for run_id in run_ids}
    ns = await _active(client, "attempts")
    if ns is None or not run_ids:
        return found
    async with client.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.zrange(ns.index_key(f"run:{run_id}"), 0, -1)
        members = cast(list[list[bytes]], await pipe.execute())
    for row in await ns.many("attempt", [m for ids in members for m in ids], AttemptRow):
        if row.run_id in found:
            found[row.run_id].append(row)
    unseen = [run_id for run_id, ids in zip(run_ids, members, strict=True) if not ids]
    for run_id, cold in (await ns.cold_runs(unseen)).items():
        found[run_id] += _decoded(cold, "attempt", AttemptRow)
    for rows in found.values():
        rows.sort(key=lambda row: row.index)
    return found


def _decoded(rows: Iterable[Row], kind: str, type_: type[T]) -> list[T]:
    """The bodies of the rows of ``kind`` among ``rows``, decoded."""
    return [msgspec.json.decode(r.body, type=type_) for r in rows if r.kind == kind and r.body]


# --- billing -------------------------------------------------------------------------------


async def billing_report(
    client: aioredis.Redis,
    group_by: GroupBy,
    *,
    window: tuple[int, int] | None = None,
    now: int | None = None,
    prices: Mapping[str, Decimal] | None = None,
) -> Report:
    """GPU-ms (and cost, with prices) per ``group_by`` over ``window``; open attempts count up
    to ``now``."""
    ns = await _active(client, "billing")
    rows = [] if ns is None else await ns.all("attempt", BilledAttempt)
    if ns is not None:
        for cold in (await ns.cold_of_kind("attempt")).values():
            rows += _decoded(cold, "attempt", BilledAttempt)
    return billing.report(rows, group_by, window=window, now=now, prices=prices)


async def billing_totals(client: aioredis.Redis, dim: billing.Dimension) -> dict[str, int]:
    """The stored totals of closed attempts per value of ``dim`` (all gpu_types summed)."""
    ns = await _active(client, "billing")
    if ns is None:
        return {}
    found = await ns.many("total", await ns.members(f"totals:{dim}"), Total)
    for cold in (await ns.cold_of_kind("total")).values():  # a run's own totals
        found += [t for t in _decoded(cold, "total", Total) if t.dim == dim]
    totals: dict[str, int] = {}
    for total in found:
        totals[total.value] = totals.get(total.value, 0) + total.gpu_ms
    return totals


# --- audit ---------------------------------------------------------------------------------


async def audit(
    client: aioredis.Redis,
    *,
    user: str | None = None,
    run: str | None = None,
    window: tuple[int, int] | None = None,
    limit: int = 1000,
    log: LogReader | Sequence[LogReader] | None = None,
) -> list[Entry]:
    """Who did what, oldest first: of one actor (user or ``service@host``), of one run (name or
    run_uid, deleted runs too), or of everyone (from the log itself: ``log``, one reader per
    partition, by default partition 0's stream without its archive); within ``window``
    ([start, end) ms)."""
    ns = await _active(client, "audit")
    if ns is None:
        return []
    if run is not None:
        found = await get_run(client, run)
        run_id = found.run_uid if found is not None else run
        entries: list[Entry] = []
        while True:  # the trail is <run_id>#0, #1, ... up to the first one missing
            ids = [f"{run_id}#{n}" for n in range(len(entries), len(entries) + _CHUNK)]
            found_entries = await ns.many("entry", ids, Entry)
            entries += found_entries
            if len(found_entries) < _CHUNK:
                break
        if not entries:  # an archived run: its trail is in the cold rows
            for rows in (await ns.cold_runs([run_id])).values():
                numbered = sorted(
                    (r for r in rows if r.kind == "entry"),
                    key=lambda r: int(r.id.rpartition("#")[2]),
                )
                entries = _decoded(numbered, "entry", Entry)
        refusals = cast(
            list[bytes], await client.zrange(ns.index_key(refusals_index(run_id)), 0, -1)
        )
        if refusals:  # on their users' partitions: placed by time (sorted is stable)
            entries = sorted(entries + await ns.many("entry", refusals, Entry), key=_time)
        if window is not None:
            entries = [e for e in entries if window[0] <= e.time < window[1]]
        return [e for e in entries if user is None or e.actor == user][:limit]
    if user is None:
        readers = each(log) if log is not None else [RedisLogReader(client)]
        pages = [await _audit_of_everyone(r, client, window, limit) for r in readers]
        # Each partition's in its log order (its time order); across them, by time.
        return list(itertools.islice(heapq.merge(*pages, key=_time), limit))
    low, high = (window[0], f"({window[1]}") if window is not None else ("-inf", "+inf")
    index = ns.index_key(f"actor:{user}")
    members = cast(list[bytes], await client.zrangebyscore(index, low, high, start=0, num=limit))
    entries = await ns.many("entry", members, Entry)
    if (cold := await ns.cold()) is not None:  # and the entries of archived runs
        span = window if window is not None else (float("-inf"), float("inf"))
        members_of = await asyncio.to_thread(
            cold.members, ns.name, ns.namespace, f"actor:{user}", span[0], span[1]
        )
        by_run: dict[str, list[Entry]] = {}
        for _, row in members_of:
            entry = msgspec.json.decode(row.body or b"{}", type=Entry)
            by_run.setdefault(entry.run_id or "", []).append(entry)
        for run_id in await ns.gone(list(by_run)):
            entries += by_run[run_id]
    return sorted(entries, key=lambda e: (e.time, e.position))[:limit]


def _time(entry: Entry) -> int:
    return entry.time


class _Named(msgspec.Struct):
    name: str


async def _audit_of_everyone(
    reader: LogReader, client: aioredis.Redis, window: tuple[int, int] | None, limit: int
) -> list[Entry]:
    """The audit entries of the log's events in ``window``, in log order (what the audit fold
    makes of them; entries that cannot be decoded are skipped, as the fold skips them)."""
    after = "0-0" if window is None or window[0] <= 0 else f"{window[0] - 1}-{_MAX_SEQ}"
    runs = await _active(client, "run_status")
    names: dict[str, str] = {}
    found: list[Entry] = []
    while len(found) < limit:
        page = await reader.read(after, _CHUNK * 5)
        records = []
        for position, flat in page:
            try:
                records.append(codec.recorded_from(position, cast(list[bytes], flat)))
            except UndecodableEvent:
                continue
        unnamed = {
            r.event.run_id
            for r in records
            if isinstance(r.event, RunEvent) and r.event.run_id not in names
        }
        if unnamed and runs is not None:
            ids = sorted(unnamed)
            raws = cast(list[bytes | None], await client.hmget(runs.rows_key("run"), ids))
            for run_id, raw in zip(ids, raws, strict=True):
                if raw is not None:
                    names[run_id] = msgspec.json.decode(raw, type=_Named).name
        for record in records:
            if window is not None and record.event.time >= window[1]:
                return found
            entry = entry_of(record, names)
            if entry is not None:
                found.append(entry)
                if len(found) == limit:
                    break
        if len(page) < _CHUNK * 5:
            break
        after = page[-1][0]
    return found


# --- utilization ---------------------------------------------------------------------------


async def utilization(
    client: aioredis.Redis, clusters: Sequence[str] | None = None
) -> list[ClusterUtilization]:
    """Per cluster: instance types with GPUs total/used/available, active and queued runs."""
    ns = await _active(client, "utilization")
    if ns is None:
        return []
    instances = await ns.many("instance", await ns.members("instances"), Instance)
    names = sorted({i.cluster for i in instances} | set(clusters or ()))
    result = []
    for cluster in names:
        if clusters is not None and cluster not in clusters:
            continue
        active = await ns.many("active", await ns.members(f"active:{cluster}"), RunLine)
        queued = await ns.many("queued", await ns.members(f"queued:{cluster}"), RunLine)
        ordered = queue_order(queued)
        result.append(
            ClusterUtilization(
                cluster=cluster,
                instances=sorted(
                    (i for i in instances if i.cluster == cluster), key=lambda i: i.name
                ),
                active_runs=sorted(active, key=lambda r: (r.created_at, r.run_id)),
                queued_runs=[QueuedRun(position=n, run=r) for n, r in enumerate(ordered, 1)],
            )
        )
    return result


async def nodes(client: aioredis.Redis) -> list[NodeLine]:
    """Every node that registered, by cluster and name: up or lost, cordoned or drained."""
    ns = await _active(client, "utilization")
    if ns is None:
        return []
    found = await ns.many("node", await ns.members("nodes"), NodeLine)
    return sorted(found, key=lambda n: (n.cluster, n.name))


def to_builtins(value: Any) -> Any:
    """Any value this module returns, as JSON-ready builtins (for ``-o json``)."""
    return msgspec.to_builtins(value)
