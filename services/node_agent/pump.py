"""Output on its way to the ingest stream, from the agent's own event loop (setup tools' output).

A ``LineBuffer`` (bounded, drops counted and marked) filled by ``pipe`` and drained by one
sender task in batches of one pipeline each (``services.output.ingest.send``); a batch that fails
is sent again after a back-off, until ``close``'s deadline. The shim has the threaded twin
(``follow``), because it must not load redis-py.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.node_agent.shim.buffer import Entry, LineBuffer
from services.node_agent.shim.lines import LineSplitter
from services.output import ingest

log = structlog.get_logger(__name__)


class OutputPump:
    def __init__(
        self,
        client: aioredis.Redis,
        run_id: str,
        attempt: int,
        rank: int,
        *,
        max_lines: int = 50_000,
        max_bytes: int = 64 * 1024 * 1024,
        batch: int = 1000,
    ) -> None:
        self.client = client
        self.batch = batch
        self.sent = 0
        self.in_flight = 0  # entries of the batch being sent now
        #: Called each time a send leaves nothing to send (``settled``): where a follower
        #: records how far its output went.
        self.on_settled: Callable[[], None] | None = None

        def make_line(source: bytes, line: bytes, cut: int) -> Entry:
            fields = ingest.ingest_fields(run_id, attempt, rank, source, line)
            if cut:
                fields[b"m"] = b"truncated:%d" % cut
            return fields

        def make_dropped(count: int) -> Entry:
            return ingest.dropped_fields(run_id, attempt, rank, count)

        self.buffer = LineBuffer(make_line, make_dropped, max_lines=max_lines, max_bytes=max_bytes)
        self._wake = asyncio.Event()
        self._closing = False
        self._deadline = float("inf")
        self._sender: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> int:
        return self.buffer.dropped

    @property
    def settled(self) -> bool:
        """Every line put so far is on the ingest stream (or was dropped, and counted)."""
        return not self.buffer and not self.in_flight

    def start(self) -> None:
        self._sender = asyncio.create_task(self._run(), name="output-pump")

    def put(self, source: bytes, line: bytes, cut: int = 0) -> None:
        if self.buffer.put(source, line, cut):
            self._wake.set()

    async def pipe(
        self, stream: asyncio.StreamReader, source: bytes, tail: deque[bytes] | None = None
    ) -> None:
        """Read ``stream`` to its end, line by line, into the buffer (and ``tail``)."""
        splitter = LineSplitter(ingest.MAX_LINE)
        while chunk := await stream.read(256 * 1024):
            lines = splitter.feed(chunk)
            for line, cut in lines:
                self.put(source, line, cut)
            if tail is not None:
                tail.extend(line for line, _ in lines[-(tail.maxlen or 0) :])
            await asyncio.sleep(0)  # a reader with data always ready must let the sender send
        last = splitter.close()
        if last is not None:
            self.put(source, *last)
            if tail is not None:
                tail.append(last[0])

    async def close(self, within: float) -> None:
        """Send what is buffered, for at most ``within`` seconds, then stop."""
        self.buffer.finish()
        self._closing = True
        self._deadline = time.monotonic() + within
        self._wake.set()
        if self._sender is not None:
            try:
                async with asyncio.timeout(within + 1):  # not wait_for: see services.core.aio
                    await asyncio.shield(self._sender)
            except TimeoutError:
                self._sender.cancel()
        if self.buffer:
            log.error("ingest.lost", lines=len(self.buffer), why="the log server did not answer")

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self.buffer:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self.buffer.take(self.batch)
            self.in_flight = len(batch)
            try:
                await ingest.send(self.client, batch)
            except (RedisError, OSError) as exc:
                self.buffer.give_back(batch)
                self.in_flight = 0
                if time.monotonic() + backoff > self._deadline:
                    return
                log.warning("ingest.send_failed", error=repr(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self.sent += len(batch)
            self.in_flight = 0
            if self.on_settled is not None and not self.buffer:
                self.on_settled()
