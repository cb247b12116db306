"""The output pump over a stand-in client: order kept, a bounded buffer, a dropped-lines marker
in place of a lost run of lines, a failed batch sent again."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.node_agent.pump import OutputPump
from services.output.ingest import MAX_LINE
from tests.waiting import eventually


class FakeRedis:
    """Just enough of a client for ``output.send``: a pipeline of XADDs."""

    def __init__(self) -> None:
        self.entries: list[dict[bytes, bytes]] = []
        self.fail_next = 0
        self.gate = asyncio.Event()
        self.gate.set()

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, server: FakeRedis) -> None:
        self.server = server
        self.batch: list[dict[bytes, bytes]] = []

    def xadd(self, stream: str, fields: dict[bytes, bytes]) -> None:
        self.batch.append(fields)

    async def execute(self) -> list[Any]:
        await self.server.gate.wait()
        if self.server.fail_next:
            self.server.fail_next -= 1
            raise RedisConnectionError("the server went away")
        self.server.entries.extend(self.batch)
        return []


def pump_on(server: FakeRedis, **options: int) -> OutputPump:
    pump = OutputPump(cast(aioredis.Redis, server), "run", 1, 2, **options)
    pump.start()
    return pump


async def test_lines_leave_in_order_in_batches() -> None:
    server = FakeRedis()
    pump = pump_on(server, batch=7)
    for i in range(100):
        pump.put(b"o", b"%d" % i)
    await pump.close(5)
    assert [fields[b"l"] for fields in server.entries] == [b"%d" % i for i in range(100)]
    assert server.entries[0][b"r"] == b"run"
    assert (server.entries[0][b"a"], server.entries[0][b"k"]) == (b"1", b"2")
    assert pump.sent == 100


async def test_a_full_buffer_drops_lines_and_says_how_many_where_they_were() -> None:
    server = FakeRedis()
    server.gate.clear()  # the server is slow: nothing leaves for now
    pump = pump_on(server, max_lines=100)
    await asyncio.sleep(0)  # allowed: one turn so the pump takes its first batch to the gate
    for i in range(250):
        pump.put(b"o", b"%d" % i)  # never blocks
    server.gate.set()
    await eventually(lambda: len(server.entries) >= 100, what="the buffer sent")
    pump.put(b"o", b"after")
    await pump.close(5)
    lines = [fields[b"l"] for fields in server.entries]
    kept = [line for line in lines if line.isdigit()]
    markers = [fields for fields in server.entries if b"m" in fields]
    assert len(markers) == 1
    assert markers[0][b"m"] == b"dropped:%d" % (250 - len(kept))
    assert markers[0][b"s"] == b"e"
    assert lines[-2:] == [markers[0][b"l"], b"after"]  # the marker stands where lines were lost
    assert pump.dropped == 250 - len(kept)


async def test_a_marker_is_sent_at_the_end_too() -> None:
    server = FakeRedis()
    server.gate.clear()
    pump = pump_on(server, max_lines=100)
    for i in range(150):
        pump.put(b"o", b"%d" % i)
    server.gate.set()
    await pump.close(5)
    assert server.entries[-1][b"m"] == b"dropped:50"


async def test_a_failed_batch_is_sent_again() -> None:
    server = FakeRedis()
    server.fail_next = 2
    pump = pump_on(server)
    pump.put(b"o", b"one")
    pump.put(b"e", b"two")
    await pump.close(10)
    assert [(f[b"s"], f[b"l"]) for f in server.entries] == [(b"o", b"one"), (b"e", b"two")]


async def test_a_cut_line_is_marked_with_what_was_cut() -> None:
    server = FakeRedis()
    pump = pump_on(server)
    pump.put(b"o", b"x" * MAX_LINE, cut=1000)
    await pump.close(5)
    assert server.entries[0][b"m"] == b"truncated:1000"
