"""A loopback TCP proxy that can swallow the server's next reply and cut the connection.

That is the case an idempotent append exists for: the server applied the request, the client
never heard back, and it retries on a new connection. ``cut`` cuts its one client off from the
server altogether (every connection closed, new ones closed at once) until ``heal``: a
single-node partition (docs/fencing.md).
"""

from __future__ import annotations

import asyncio
import contextlib


class DroppingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.drop_next_reply = False
        self.dropped = 0
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aenter__(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        self.cut_off = True
        for writer in self._open:
            writer.close()

    def heal(self) -> None:
        self.cut_off = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off or not self.upstream[1]:  # no upstream yet: as if cut off
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._open.update((writer, up_writer))
        tasks = [
            asyncio.create_task(self._pump(reader, up_writer, replies=False)),
            asyncio.create_task(self._pump(up_reader, writer, replies=True)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            self._open.discard(w)
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):  # ``cut`` closed it under the pump
            while data := await source.read(65536):
                if replies and self.drop_next_reply:
                    self.drop_next_reply = False
                    self.dropped += 1
                    return  # the reply is lost and both connections close
                sink.write(data)
                await sink.drain()
