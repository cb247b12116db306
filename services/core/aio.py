"""asyncio helpers the services share.

Why not ``asyncio.wait_for(event.wait(), t)``: on Python 3.11 it can swallow a cancellation that
arrives while the event is being set (gh-86296, fixed by 3.12's rewrite on ``asyncio.timeout``).
A task that swallows its cancellation never ends, and the TaskGroup waiting on it hangs: this
was a scheduler that, once deposed, never stood by. ``asyncio.timeout`` counts cancellations and
lets an outside one through, so every timed wait here is built on it.
"""

from __future__ import annotations

import asyncio
import signal


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def first_of(events: list[asyncio.Event], within: float | None) -> None:
    """Until one of ``events`` is set, or ``within`` seconds passed (None: no limit)."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT (what a container runtime or Ctrl+C sends), from the
    running loop, so a service stops the way its own code says rather than where a signal
    happened to land."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
