"""Every service's Prometheus metrics: one registry per process, scraped at ``GET /metrics``.

The metrics are prometheus-client's (``REGISTRY``: counters and histograms that a service's edge
updates, and collectors that read its in-memory state at scrape time), rendered by
``generate_latest``. The endpoint is served on the service's own event loop rather than in
prometheus-client's thread server: a collector then reads the service's state (the scheduler's
cluster view) on the thread that changes it, between two steps, never half-way through one.

HTTP/1.0 (one request per connection, as Prometheus scrapes). ``extra`` renderers append text
that is already in the exposition format (the node-agent's DCGM gauges, integers as NVIDIA's
exporter writes them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

#: What ``generate_latest`` writes, in every prometheus-client since 0.20 (its own
#: CONTENT_TYPE_LATEST says 1.0.0 in newer ones, which an older Prometheus does not expect).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_READ_S = 5.0

#: The process's metrics: each module registers its own here (``registry=REGISTRY``).
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # CPU seconds, resident memory, open files, start time


def render(registry: CollectorRegistry = REGISTRY, *extra: Callable[[], str]) -> str:
    """The exposition of ``registry``, then what each of ``extra`` renders."""
    return generate_latest(registry).decode() + "".join(more() for more in extra)


async def serve(
    host: str, port: int, *extra: Callable[[], str], registry: CollectorRegistry = REGISTRY
) -> asyncio.Server:
    """Answer ``GET /metrics`` on ``host:port`` until the returned server is closed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_S):
                request = await reader.readuntil(b"\r\n\r\n")
            target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if target.split(b"?")[0] == b"/metrics":
                body, status = render(registry, *extra).encode(), "200 OK"
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


@contextlib.asynccontextmanager
async def serving(host: str, port: int | None, *extra: Callable[[], str]) -> AsyncIterator[None]:
    """Serve the metrics for the body's lifetime (nothing where ``port`` is None)."""
    if port is None:
        yield
        return
    server = await serve(host, port, *extra)
    try:
        yield
    finally:
        server.close()
