"""Where projection builds live in Redis, and the one transaction that stores a batch.

Layout (``events.keys``): rows of a kind in a hash, listing indexes in sorted sets, a
checkpoint per build, and per projection an active pointer naming the build readers read.
Every key carries the hash tag ``{proj}``. A checkpoint is one string holding the build's
position on every partition of the log (``projections.base.format_checkpoint``): one key, so
the commit checks and moves all of them at once, in the slot of the rows.

Invariants:
- ``commit`` writes every build's rows and checkpoint of a batch in one server-side function
  (``commit.lua``), and only if each checkpoint still holds what the batch expects and each
  active pointer still names what the build expects; otherwise nothing is written and
  ``Superseded`` is raised; likewise (``fenced``) if the store has a fence and its lease no
  longer holds the writer's token.
- ``drop`` deletes a build's checkpoint before its rows, so a half-dropped build is never taken
  for a complete one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from importlib.resources import files
from pathlib import Path

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from events import keys
from projections.base import ZERO, Positions, Row, RowKey, parse_checkpoint
from projections.cold import ColdRows, anchors
from projections.engine import Batch
from projections.errors import Superseded

_FUNCTION = files("projections").joinpath("commit.lua").read_text()
Args = list[str | bytes]
_packer = msgspec.msgpack.Encoder()
_MEMORY = "memory"
#: One run's rows in one build as the cooler found them: the projection, the namespace, the
#: rows it read (None: missing) and the run's rows as stored (``Evicting.as_stored``).
ColdBuild = tuple[str, str, Mapping[RowKey, bytes | None], Sequence[Row]]


def to_call(batch: Batch, fence: tuple[str, str] | None = None) -> tuple[list[str], Args]:
    """KEYS and ARGV of ``runplane_project`` for ``batch`` (see commit.lua); ``fence``: the
    lease key and the token it must hold for the commit to be taken."""
    call_keys: list[str] = []
    for part in batch.parts:
        call_keys += [keys.projection_checkpoint(part.name, part.namespace)]
        call_keys += [keys.projection_active(part.name)]
    args: Args = [str(len(batch.parts))]
    for part in batch.parts:
        activate = part.namespace if part.activate else ""
        args += [part.expected_checkpoint, part.expect_active, part.checkpoint, activate]
    writes: list[tuple[str, int, list[str | int]]] = []
    for part in batch.parts:
        for op, groups in _grouped(part.rows):
            key_of = keys.projection_rows if op in "HD" else keys.projection_index
            for what, values in groups.items():
                call_keys.append(key_of(part.name, part.namespace, what))
                writes.append((op, len(call_keys), values))
    args.append(_packer.encode(writes))
    if fence is not None:
        call_keys.append(fence[0])
        args.append(fence[1])
    return call_keys, args


Groups = dict[str, list[str | int]]


def _grouped(rows: Iterable[Row]) -> tuple[tuple[str, Groups], ...]:
    """Per op, the values of each row kind (H, D) or index (Z, R): a hot loop, one dict lookup
    per write. Scores go as integers (Lua numbers; ZADD takes them as they are)."""
    hset: Groups = {}
    hdel: Groups = {}
    zadd: Groups = {}
    zrem: Groups = {}
    for row in rows:
        row_id, body = row.id, row.body
        if body is None:
            values = hdel.get(row.kind)
            if values is None:
                values = hdel[row.kind] = []
            values.append(row_id)
        else:
            values = hset.get(row.kind)
            if values is None:
                values = hset[row.kind] = []
            values += (row_id, body.decode())  # cmsgpack takes no bin: a str
        for index, score in row.index:
            values = zadd.get(index)
            if values is None:
                values = zadd[index] = []
            values += (score, row_id)
        for index in row.unindex:
            values = zrem.get(index)
            if values is None:
                values = zrem[index] = []
            values.append(row_id)
    return ("H", hset), ("D", hdel), ("Z", zadd), ("R", zrem)


def writes_of(args: Args, builds: int) -> list[tuple[str, int, list[str | int]]]:
    """The write groups of an encoded call (for tests that apply a call themselves)."""
    blob = args[1 + 4 * builds]
    assert isinstance(blob, bytes)
    return msgspec.msgpack.decode(blob, type=list[tuple[str, int, list[str | int]]])


def namespace_version(namespace: str) -> int | None:
    """The fold version of a build's namespace (``v3`` and ``v3r<ms>`` are version 3)."""
    digits = namespace.removeprefix("v").partition("r")[0]
    return int(digits) if namespace.startswith("v") and digits.isdigit() else None


class RedisStore:
    """Projection builds on a Redis server."""

    def __init__(self, client: aioredis.Redis, fence: tuple[str, str] | None = None) -> None:
        """``fence``: (lease key, token): commits are taken only while the lease holds it."""
        self.redis = client
        self.fence = fence
        self._loaded = False

    async def active(self, name: str) -> str | None:
        value = await self.redis.get(keys.projection_active(name))
        return value.decode() if isinstance(value, bytes) else value

    async def checkpoint(self, name: str, namespace: str) -> Positions:
        """Where a build stands on each partition (those not named, at the end, at zero)."""
        value = await self.redis.get(keys.projection_checkpoint(name, namespace))
        if value is None:
            return (ZERO,)
        return parse_checkpoint(value.decode() if isinstance(value, bytes) else value)

    async def memory(self, name: str, namespace: str) -> bytes | None:
        """A build's memory as ``keep_memory`` wrote it (None: none)."""
        found = await self.redis.hget(keys.projection_memory(name, namespace), _MEMORY)
        return found if isinstance(found, bytes) else None

    async def keep_memory(self, name: str, namespace: str, memory: bytes | None) -> None:
        """Write a build's memory down (None: forget it)."""
        key = keys.projection_memory(name, namespace)
        if memory is None:
            await self.redis.hdel(key, _MEMORY)
        else:
            await self.redis.hset(key, _MEMORY, memory)

    async def commit(self, batch: Batch) -> None:
        call_keys, args = to_call(batch, self.fence)
        reply = await self._call("runplane_project", call_keys, args)
        status = _text(reply[0])
        if status != "ok":
            raise Superseded(status, _text(reply[1]), _text(reply[2]))

    async def _call(self, function: str, call_keys: list[str], args: Args) -> list[bytes | str]:
        """FCALL ``function`` of ``commit.lua``, loading it first where the server lacks it."""
        if not self._loaded:  # a large batch is not sent twice to find the function missing
            await self.redis.function_load(_FUNCTION, replace=True)
            self._loaded = True
        try:
            return list(await self.redis.fcall(function, len(call_keys), *call_keys, *args))
        except ResponseError as exc:
            if "Function not found" not in str(exc):
                raise
            await self.redis.function_load(_FUNCTION, replace=True)  # the server lost it
            return list(await self.redis.fcall(function, len(call_keys), *call_keys, *args))

    async def rows(
        self, wanted: Sequence[tuple[str, str, Sequence[RowKey]]]
    ) -> list[list[bytes | None]]:
        """For each (projection, namespace, row keys), the stored bodies (None: no such row):
        one round trip, an ``HMGET`` per hash."""
        fields: dict[str, list[str]] = {}
        for name, namespace, row_keys in wanted:
            for kind, row_id in row_keys:
                fields.setdefault(keys.projection_rows(name, namespace, kind), []).append(row_id)
        pipe = self.redis.pipeline(transaction=False)
        for key, ids in fields.items():
            pipe.hmget(key, ids)
        found = {
            key: iter(bodies) for key, bodies in zip(fields, await pipe.execute(), strict=True)
        }
        return [
            [next(found[keys.projection_rows(name, namespace, kind)]) for kind, _ in row_keys]
            for name, namespace, row_keys in wanted
        ]

    async def cold(self, name: str, namespace: str, runs: Sequence[str]) -> dict[str, list[Row]]:
        """The rows of ``runs`` that left Valkey for the cold rows (``projections.cold``), in
        the build ``name``/``namespace``, by run: the runs that are cold there (none of their
        ``anchors`` is stored)."""
        root = await self.redis.get(keys.cold_rows())
        if root is None or not runs:
            return {}
        asked = [(name, namespace, anchors(name, run)) for run in runs]
        there = await self.rows(asked)
        gone = [run for run, bodies in zip(runs, there, strict=True) if not any(bodies)]
        cold = ColdRows(Path(_text(root)))
        return await asyncio.to_thread(cold.runs, name, namespace, gone) if gone else {}

    async def forget_names(self, named: Sequence[tuple[str, str]]) -> int:
        """Delete the reserved names (``keys.run_name``) of cooled runs, ``(name, run id)``,
        each only while it still names that run (``runplane_forget_name``); how many went."""
        if not named:
            return 0
        if not self._loaded:
            await self.redis.function_load(_FUNCTION, replace=True)
            self._loaded = True
        pipe = self.redis.pipeline(transaction=False)
        for name, run in named:  # one key a call: names hash to any slot of a cluster
            pipe.fcall("runplane_forget_name", 1, keys.run_name(name), run)
        return sum(int(gone) for gone in await pipe.execute())

    async def cool(self, runs: Sequence[Sequence[ColdBuild]]) -> int:
        """Delete each run's rows (every build of it at once), if each is still as read and
        each build still the active one (``runplane_cool``); how many runs left Valkey."""
        call_keys: list[str] = []
        places: dict[str, int] = {}

        def place(key: str) -> int:
            if key not in places:
                call_keys.append(key)
                places[key] = len(call_keys)
            return places[key]

        items = []
        for builds in runs:
            checks: list[list[object]] = []
            actives: list[list[object]] = []
            deletes: list[list[object]] = []
            for name, namespace, found, rows in builds:
                actives.append([place(keys.projection_active(name)), namespace])
                for (kind, row_id), body in found.items():
                    at = place(keys.projection_rows(name, namespace, kind))
                    checks.append(
                        [at, row_id, 1, body.decode()] if body is not None else [at, row_id, 0, ""]
                    )
                for row in rows:
                    deletes.append(
                        ["D", place(keys.projection_rows(name, namespace, row.kind)), row.id]
                    )
                    for index, _ in row.index:
                        deletes.append(
                            ["R", place(keys.projection_index(name, namespace, index)), row.id]
                        )
            items.append([checks, actives, deletes])
        args: Args = [_packer.encode(items)]
        if self.fence is not None:
            call_keys.append(self.fence[0])
            args.append(self.fence[1])
        reply = await self._call("runplane_cool", call_keys, args)
        if _text(reply[0]) != "ok":
            raise Superseded(_text(reply[0]), _text(reply[1]), _text(reply[2]))
        return int(reply[1])

    async def drop(self, name: str, namespace: str) -> int:
        """Delete one build of a projection (never the active one: the caller checks)."""
        prefix = keys.projection_prefix(name, namespace)
        await self.redis.delete(keys.projection_checkpoint(name, namespace))
        dropped = 0
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=f"{_escape(prefix)}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                dropped += await self.redis.unlink(*batch)
                batch = []
        if batch:
            dropped += await self.redis.unlink(*batch)
        return dropped


def _escape(pattern: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in pattern)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
