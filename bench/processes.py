"""Ending the service processes a bench started."""

from __future__ import annotations

import asyncio


async def stop(process: asyncio.subprocess.Process, within_s: float = 30.0) -> None:
    """SIGTERM (the service ends cleanly: a profiled one writes its stats), SIGKILL after
    ``within_s``."""
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(within_s):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
