"""Synchronous calls over the async client, as mcli's SDK functions are synchronous.

Each call opens a client (finding runplane as the CLI does), runs the coroutine on its own
event loop and closes the client. Called from inside a running event loop (a notebook), the
call runs on a helper thread so it neither blocks on nor disturbs that loop. Iterators
(logs, status watches) drive an async generator one item at a time on a private loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from cli.client import Client

T = TypeVar("T")
R = TypeVar("R")


def call(work: Callable[[Client], Awaitable[T]]) -> T:
    """``work(client)`` run to completion, synchronously."""

    async def main() -> T:
        client = Client.discover()
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def iterate(work: Callable[[Client], AsyncIterator[T]]) -> Iterator[T]:
    """The items of ``work(client)``, one at a time, synchronously (a generator).

    The async generator lives on a private loop in a helper thread, so this works with or
    without a running loop in the caller's thread; leaving early closes it and the client.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mcli-sdk", daemon=True)
    thread.start()

    def run(step: Coroutine[Any, Any, R]) -> R:
        return asyncio.run_coroutine_threadsafe(step, loop).result()

    client: Client | None = None
    items: AsyncIterator[T] | None = None
    try:
        client = Client.discover()
        items = work(client)

        async def step(source: AsyncIterator[T] = items) -> T:
            return await anext(source)

        while True:
            try:
                item = run(step())
            except StopAsyncIteration:
                return
            yield item
    finally:
        if isinstance(items, AsyncGenerator):
            run(items.aclose())
        if client is not None:
            run(client.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
