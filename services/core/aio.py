"""asyncio helpers the services share.

Why not ``asyncio.wait_for(event.wait(), t)``: on Python 3.11 it can swallow a cancellation that
arrives while the event is being set (gh-86296, fixed by 3.12's rewrite on ``asyncio.timeout``).
A task that swallows its cancellation never ends, and the TaskGroup waiting on it hangs: this
was a scheduler that, once deposed, never stood by. ``asyncio.timeout`` counts cancellations and
lets an outside one through, so every timed wait here is built on it.
"""

from __future__ import annotations

import asyncio


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
