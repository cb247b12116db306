"""In-memory stand-ins for the projector's IO, with crashes on demand.

``FakeStore`` applies a batch exactly as ``commit.lua`` does, from the same encoded call
(``projections.storage.to_call``): checks first, then every write, or nothing. ``FakeLog`` is a
log a writer reveals bit by bit; ``FakeGroup`` a consumer group over it (delivered, pending,
claimed, acknowledged). ``Chaos`` decides, call by call, whether the process dies there.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from events import keys
from projections.base import (
    ZERO,
    Position,
    Positions,
    Row,
    RowKey,
    parse_checkpoint,
    parse_position,
)
from projections.catalog import make_all
from projections.cold import anchors
from projections.engine import Batch, Fields
from projections.errors import Superseded
from projections.reader import Entry
from projections.runner import Runner
from projections.storage import ColdBuild, to_call, writes_of
from services.projector.projector import Projector


class Crash(Exception):
    """The projector process died here (kill -9)."""


class Chaos:
    def __init__(self, rng: random.Random, rate: float, limit: int = 25) -> None:
        self.rng = rng
        self.rate = rate
        self.limit = limit
        self.crashes = 0

    def maybe(self, where: str) -> None:
        if self.crashes < self.limit and self.rng.random() < self.rate:
            self.crashes += 1
            raise Crash(where)


class FakeStore:
    def __init__(self, chaos: Chaos | None = None) -> None:
        self.strings: dict[str, str] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.memories: dict[str, bytes] = {}
        #: The cold rows (``projections.cold``): (projection, namespace, run) -> its rows.
        self.cold_rows: dict[tuple[str, str, str], list[Row]] = {}
        self.chaos = chaos
        self.commits = 0

    async def active(self, name: str) -> str | None:
        return self.strings.get(keys.projection_active(name))

    async def checkpoint(self, name: str, namespace: str) -> Positions:
        value = self.strings.get(keys.projection_checkpoint(name, namespace))
        return (ZERO,) if value is None else parse_checkpoint(value)

    async def memory(self, name: str, namespace: str) -> bytes | None:
        return self.memories.get(keys.projection_memory(name, namespace))

    async def keep_memory(self, name: str, namespace: str, memory: bytes | None) -> None:
        key = keys.projection_memory(name, namespace)
        if memory is None:
            self.memories.pop(key, None)
        else:
            self.memories[key] = memory

    async def commit(self, batch: Batch) -> None:
        if self.chaos:
            self.chaos.maybe("before the transaction")
        call_keys, args = to_call(batch)
        builds = int(args[0])
        if self._stored_already(call_keys, args, builds):
            return
        self._check(call_keys, args, builds)
        for op, index, values in writes_of(args, builds):
            self._write(op, call_keys[index - 1], values)
        for i in range(builds):
            new, activate = args[3 + 4 * i], args[4 + 4 * i]
            assert isinstance(new, str)
            assert isinstance(activate, str)
            self.strings[call_keys[2 * i]] = new
            if activate:
                self.strings[call_keys[2 * i + 1]] = activate
        self.commits += 1
        if self.chaos:
            self.chaos.maybe("after the transaction")

    def _stored_already(self, call_keys: list[str], args: list[str | bytes], builds: int) -> bool:
        return builds > 0 and all(
            self.strings.get(call_keys[2 * i], "0-0") == args[3 + 4 * i] != args[1 + 4 * i]
            and self.strings.get(call_keys[2 * i + 1], "") in (args[2 + 4 * i], args[4 + 4 * i])
            for i in range(builds)
        )

    def _check(self, call_keys: list[str], args: list[str | bytes], builds: int) -> None:
        for i in range(builds):
            expected_checkpoint, expected_active = args[1 + 4 * i], args[2 + 4 * i]
            checkpoint: str = self.strings.get(call_keys[2 * i], "0-0")
            if checkpoint != expected_checkpoint:
                raise Superseded("conflict", call_keys[2 * i], checkpoint)
            active = self.strings.get(call_keys[2 * i + 1], "")
            if active != expected_active:
                raise Superseded("moved", call_keys[2 * i + 1], active)

    def _write(self, op: str, key: str, values: list[str | int]) -> None:
        if op == "H":
            table = self.hashes.setdefault(key, {})
            for field, value in zip(values[::2], values[1::2], strict=True):
                table[str(field)] = str(value).encode()
        elif op == "D":
            for field in values:
                self.hashes.get(key, {}).pop(str(field), None)
        elif op == "Z":
            zset = self.zsets.setdefault(key, {})
            for score, member in zip(values[::2], values[1::2], strict=True):
                zset[str(member)] = float(score)
        else:
            for member in values:
                self.zsets.get(key, {}).pop(str(member), None)

    async def rows(
        self, wanted: Sequence[tuple[str, str, Sequence[RowKey]]]
    ) -> list[list[bytes | None]]:
        return [
            [
                self.hashes.get(keys.projection_rows(name, namespace, kind), {}).get(row_id)
                for kind, row_id in row_keys
            ]
            for name, namespace, row_keys in wanted
        ]

    async def cold(self, name: str, namespace: str, runs: Sequence[str]) -> dict[str, list[Row]]:
        found = {}
        for run in runs:
            if any(
                row_id in self.hashes.get(keys.projection_rows(name, namespace, kind), {})
                for kind, row_id in anchors(name, run)
            ):
                continue  # warm
            if rows := self.cold_rows.get((name, namespace, run)):
                found[run] = list(rows)
        return found

    async def cool(self, runs: Sequence[Sequence[ColdBuild]]) -> int:
        """``runplane_cool`` on the fake: each run whose rows are as read leaves, whole."""
        gone = 0
        for builds in runs:
            same = all(
                self.strings.get(keys.projection_active(name)) == namespace
                and all(
                    self.hashes.get(keys.projection_rows(name, namespace, kind), {}).get(row_id)
                    == body
                    for (kind, row_id), body in found.items()
                )
                for name, namespace, found, _ in builds
            )
            if not same:
                continue
            for name, namespace, _, rows in builds:
                for row in rows:
                    self.hashes.get(keys.projection_rows(name, namespace, row.kind), {}).pop(
                        row.id, None
                    )
                    for index, _ in row.index:
                        zset = self.zsets.get(keys.projection_index(name, namespace, index), {})
                        zset.pop(row.id, None)
            gone += 1
        return gone

    async def drop(self, name: str, namespace: str) -> int:
        prefix = keys.projection_prefix(name, namespace)
        dropped = 0
        for table in (self.strings, self.hashes, self.zsets):
            for key in [k for k in table if k.startswith(prefix)]:
                del table[key]
                dropped += 1
        return dropped

    def build(self, name: str, namespace: str | None = None) -> dict[str, object]:
        """Everything stored for one build (the active one by default), keyed without prefix."""
        namespace = namespace or self.strings[keys.projection_active(name)]
        prefix = keys.projection_prefix(name, namespace)
        found: dict[str, object] = {}
        for table in (self.strings, self.hashes, self.zsets):
            for key, value in table.items():
                if key.startswith(prefix) and value:
                    found[key.removeprefix(prefix)] = value
        return found


class FakeLog:
    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries = list(entries)
        self.visible = 0
        self.reads: list[str] = []  # the ``after`` of every read, in order

    def reveal(self, n: int) -> None:
        self.visible = min(len(self.entries), self.visible + n)

    @property
    def complete(self) -> bool:
        return self.visible == len(self.entries)

    async def read(self, after: str, count: int) -> Sequence[Entry]:
        self.reads.append(after)
        start = parse_position(after) if after not in ("0", "0-0") else ZERO
        shown = self.entries[: self.visible]
        return [e for e in shown if parse_position(e[0]) > start][:count]


class FakeGroup:
    def __init__(self, log: FakeLog, chaos: Chaos | None = None) -> None:
        self.log = log
        self.chaos = chaos
        self.delivered: Position = ZERO
        self.pending: dict[str, Fields] = {}
        self.deliveries = 0
        self.dead: list[tuple[str, str]] = []

    async def ensure(self) -> None:
        pass

    async def read(self, count: int, block_ms: int) -> Sequence[Entry]:
        shown = self.log.entries[: self.log.visible]
        new = [e for e in shown if parse_position(e[0]) > self.delivered][:count]
        for position, fields in new:
            self.pending[position] = fields
            self.delivered = parse_position(position)
        self.deliveries += len(new)
        return new

    async def claim(self, min_idle_ms: int, start: str, count: int) -> tuple[str, Sequence[Entry]]:
        ordered = sorted(self.pending.items(), key=lambda item: parse_position(item[0]))
        after = parse_position(start) if start not in ("0", "0-0") else (-1, -1)
        taken = [(p, f) for p, f in ordered if parse_position(p) >= after][:count]
        rest = [(p, f) for p, f in ordered if parse_position(p) >= after][count:]
        self.deliveries += len(taken)
        return (rest[0][0] if rest else "0-0"), taken

    async def ack(self, positions: Sequence[str]) -> None:
        if self.chaos:
            self.chaos.maybe("before the acknowledgement")
        for position in positions:
            self.pending.pop(position, None)

    async def dead_letter(self, position: str, fields: Mapping[bytes, bytes], why: str) -> None:
        self.dead.append((position, why))

    async def advance(self, position: str) -> None:
        self.delivered = max(self.delivered, parse_position(position))


# --- a projector that crashes, and a rebuild, over fake partitions --------------------------


async def crashing_projector(
    split: Sequence[Sequence[Entry]], rng: random.Random, rate: float
) -> FakeStore:
    """A projector following each partition's group (one or several) while they grow unevenly,
    dying at random points; a new one starts from the stored checkpoints."""
    chaos = Chaos(rng, rate)
    store = FakeStore(chaos)
    logs = [FakeLog(entries) for entries in split]
    groups = [FakeGroup(log, chaos) for log in logs]
    projector: Projector | None = None
    while True:
        rng.choice(logs).reveal(rng.randint(0, 15))
        try:
            if projector is None:
                projector = Projector(
                    store,
                    logs,
                    groups,
                    make_all,
                    batch=rng.randint(1, 25),
                    page=rng.randint(1, 40),
                    commit_every=rng.randint(1, 120),
                )
                await projector.start()
            if rng.random() < 0.1:
                await projector.reap(1)
            read = await projector.step(0)
        except Crash:
            projector = None  # kill -9: everything in memory is gone
            continue
        done = all(log.complete for log in logs) and not any(g.pending for g in groups)
        if read == 0 and done:
            return store


async def rebuilt(split: Sequence[Sequence[Entry]]) -> FakeStore:
    store = FakeStore()
    logs = [FakeLog(entries) for entries in split]
    for log in logs:
        log.reveal(len(log.entries))
    page = max(len(entries) for entries in split) + 1  # each partition whole, one after another
    await Runner(store, logs, make_all(), page=page).start()
    return store
