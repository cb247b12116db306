"""Every service's Prometheus metrics: one registry per process, scraped at ``GET /metrics``.

The metrics are prometheus-client's (``REGISTRY``: counters and histograms that a service's edge
updates, and collectors that read its in-memory state at scrape time), rendered by
``generate_latest``. The endpoint is served on the service's own event loop rather than in
prometheus-client's thread server: a collector then reads the service's state (the scheduler's
cluster view) on the thread that changes it, between two steps, never half-way through one.

HTTP/1.0 (one request per connection, as Prometheus scrapes). ``extra`` renderers append text
that is already in the exposition format (the node-agent's DCGM gauges, integers as NVIDIA's
exporter writes them). What only the server knows (a consumer group's lag) is asked for at each
scrape by the ``refresh_with`` hooks, each within a bound; one that fails or is late leaves its
gauges as they were and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

log = structlog.get_logger(__name__)

#: What ``generate_latest`` writes, in every prometheus-client since 0.20 (its own
#: CONTENT_TYPE_LATEST says 1.0.0 in newer ones, which an older Prometheus does not expect).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_READ_S = 5.0
_REFRESH_S = 2.0

Refresher = Callable[[], Awaitable[None]]
#: What is asked of the server before each scrape, by key (a later hook of a key replaces one
#: made before: a consumer that connected again).
_REFRESHERS: dict[str, Refresher] = {}

#: The process's metrics: each module registers its own here (``registry=REGISTRY``).
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # CPU seconds, resident memory, open files, start time


def refresh_with(key: str, refresher: Refresher) -> None:
    """Have ``refresher`` run before each scrape (it sets gauges from the server)."""
    _REFRESHERS[key] = refresher


async def refresh() -> None:
    """Run every hook, each within a bound; a failure is logged, never raised."""
    for key, refresher in list(_REFRESHERS.items()):
        try:
            async with asyncio.timeout(_REFRESH_S):
                await refresher()
        except Exception as exc:  # noqa: BLE001 - a scrape must answer whatever a hook does
            log.warning("metrics.refresh_failed", hook=key, error=repr(exc))


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
                await refresh()
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
