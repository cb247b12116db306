"""``wait_event``: a timed wait on an event that never swallows the task's cancellation."""

from __future__ import annotations

import asyncio

from services.core.aio import wait_event


async def _wait_in_a_loop(event: asyncio.Event) -> None:
    """The scheduler's decision loop, reduced: clear, wait for a wake-up or a tick, repeat."""
    while True:
        event.clear()
        await wait_event(event, 0.1)


async def test_a_cancel_that_meets_a_set_still_ends_the_task() -> None:
    # With asyncio.wait_for in place of wait_event, Python 3.11 swallows this cancellation
    # and the loop runs forever (measured: the task never ends).
    event = asyncio.Event()
    task = asyncio.create_task(_wait_in_a_loop(event))
    for _ in range(3):
        await asyncio.sleep(0)  # allowed: let the task reach its wait
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done == {task}
    assert task.cancelled()


async def test_it_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True
