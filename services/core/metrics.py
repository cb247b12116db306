"""A Prometheus scrape endpoint: ``GET /metrics`` answered with what ``render`` returns.

HTTP/1.0 by hand on asyncio's streams (one request per connection, as Prometheus scrapes):
a service needs no web framework, and no client library, to export a few gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_READ_S = 5.0


async def serve(host: str, port: int, render: Callable[[], str]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_S):
                request = await reader.readuntil(b"\r\n\r\n")
            target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if target.split(b"?")[0] == b"/metrics":
                body, status = render().encode(), "200 OK"
            else:
                body, status = b"not found: try /metrics\n", "404 Not Found"
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
