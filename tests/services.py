"""A service under test as a real process: ``python -m <module>``, its output appended to a log.

Integration tests start, stop and kill -9 services through this one class, so "stop" means the
same everywhere: SIGTERM (the service's clean shutdown), then SIGKILL if it has not exited in
time, and the exit code tells which happened.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Self


class ServiceProcess:
    def __init__(self, module: str, env: Mapping[str, str], log: Path) -> None:
        self.module = module
        self.env = dict(env)
        self.log_path = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", self.module),
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def stop(self, within_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``within_s``; the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(within_s):
                    return await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
        return await self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
