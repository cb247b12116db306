"""Waiting on a condition with a deadline: the only way tests wait."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

_MISSING = object()


async def eventually(
    probe: Callable[[], Any | Awaitable[Any]],
    *,
    equals: Any = _MISSING,
    what: str,
    within: float = 30.0,
    interval: float = 0.02,
) -> Any:
    """Poll ``probe`` until it is truthy (or equals ``equals``); fail after ``within`` s."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = probe()
        if inspect.isawaitable(last):
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 1.0)):
                    last = await last
            except TimeoutError:
                raise AssertionError(f"timed out after {within}s probing for {what}") from None
        if (last == equals) if equals is not _MISSING else bool(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)  # allowed: polling inside a deadline loop
