"""A service under test as a real process: ``python -m <module>``, its output appended to a log.

Integration tests start, stop and kill -9 services through this one class, so "stop" means the
same everywhere: SIGTERM (the service's clean shutdown), then SIGKILL if it has not exited in
time, and the exit code tells which happened.

With ``RUNPLANE_TEST_ACL=1`` a service logs in as its own ACL user (``tests.acl_users``) and
``stop`` fails if the server refused it anything: how a service's rule in
``services/core/acl.py`` is checked against its own tests. (Not by default: a user made by
ACL SETUSER is gone once a test restarts the server.)
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from services.core import acl
from tests.acl_users import login_as, refused, server_ms

_USERS = {
    "services.scheduler": acl.SCHEDULER,
    "services.projector": acl.PROJECTOR,
    "services.log_collector": acl.LOG_COLLECTOR,
    "services.node_agent": acl.NODE_AGENT,
    "services.api": acl.API,
}


class ServiceProcess:
    def __init__(self, module: str, env: Mapping[str, str], log: Path) -> None:
        self.module = module
        self.env = dict(env)
        self.log_path = log
        self.proc: asyncio.subprocess.Process | None = None
        self._login: tuple[str, str, int] | None = None  # server, user, since (RUNPLANE_TEST_ACL)

    async def start(self) -> Self:
        user = _USERS.get(self.module)
        if (
            user is not None
            and os.environ.get("RUNPLANE_TEST_ACL")
            and "RUNPLANE_REDIS_USERNAME" not in self.env
        ):
            url = self.env["RUNPLANE_REDIS_URL"]
            self.env |= login_as(url, user, self.log_path.parent / "secrets")
            self._login = (url, user, server_ms(url))
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
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
        code = await self.proc.wait()
        if self._login is not None:
            assert refused(*self._login) == [], f"{self.module}: services/core/acl.py"
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
