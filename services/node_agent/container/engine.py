"""The container engine's command line, from the agent's event loop: the only module that runs it.

Why the CLI (``podman ... --format json``) and not the REST API (the Docker SDK for Python
against podman's compatible socket):
- the CLI is what an operator has and checks by hand: a node needs podman and nothing else (no
  API service to enable and keep running, no socket to secure, no SDK whose podman support
  lags podman's), and every call the agent makes can be typed into a shell to see what it saw;
- podman has no daemon: through the CLI, each container has its own monitor (conmon), which
  outlives the agent, so a kill -9 of the agent leaves the ranks running, to be adopted by
  label, exactly as the process executor's shims are;
- the engine's own words reach the user unchanged: a failed pull's registry message is the
  CLI's last line, where the compatible API wraps it in its own error shapes;
- no thread pool of blocking SDK calls: each call is an asyncio subprocess.
The price is a process per call (about 50 ms of CPU for podman), paid at a rank's start and
end, never per output line.

Each call runs ``<engine> <engine_args> <command>`` with ``CONTAINERS_CONF`` set when the agent
names a containers.conf (on hosts where podman's defaults do not run: ``docs/containers.md``).
A call's working directory matters once: podman's container monitor (conmon) starts in it and,
on cgroup v1, writes its OOM marker there (``oom``) rather than where podman 4 looks for it; the
executor runs a rank's ``run`` in a directory of the rank's and reads the marker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from services.node_agent.container.outcome import engine_error
from services.node_agent.errors import NodeAgentError

log = structlog.get_logger(__name__)

_CALL_S = 120.0  # a control call (inspect, list, remove) that hangs this long: the engine is stuck
_NO_SUCH = ("no such container", "no container with name or id")


class EngineError(NodeAgentError):
    """The engine refused or failed a call; the message is its own last words."""


class Done(NamedTuple):
    code: int
    stdout: bytes
    stderr: bytes


class Engine:
    def __init__(
        self, binary: str = "podman", args: Sequence[str] = (), conf: Path | None = None
    ) -> None:
        self.binary = binary
        self.args = list(args)
        self.env = dict(os.environ)
        if conf is not None:
            self.env["CONTAINERS_CONF"] = str(conf)

    def argv(self, *command: str) -> list[str]:
        return [self.binary, *self.args, *command]

    async def spawn(
        self,
        *command: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int = asyncio.subprocess.PIPE,
        stderr: int = asyncio.subprocess.PIPE,
    ) -> asyncio.subprocess.Process:
        """The engine running ``command``; the caller reads and waits for it."""
        try:
            return await asyncio.create_subprocess_exec(
                *self.argv(*command),
                cwd=cwd,
                env={**self.env, **(env or {})},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        except OSError as exc:
            raise EngineError(f"{self.binary} could not start: {exc}") from exc

    async def call(
        self,
        *command: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        within: float | None = _CALL_S,
    ) -> Done:
        """Run ``command`` to its end (killed after ``within`` seconds)."""
        proc = await self.spawn(*command, cwd=cwd, env=env)
        try:
            async with asyncio.timeout(within):
                stdout, stderr = await proc.communicate()
        except TimeoutError:
            raise EngineError(
                f"`{self.binary} {command[0]}` did not answer in {within:g}s"
            ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return Done(proc.returncode, stdout, stderr)

    async def check(self, *command: str, cwd: Path | None = None) -> bytes:
        """Run ``command``; its stdout, or ``EngineError`` with the engine's message."""
        done = await self.call(*command, cwd=cwd)
        if done.code != 0:
            raise EngineError(_last_words(done.stderr))
        return done.stdout

    # --- containers -----------------------------------------------------------------------

    async def inspect(self, name: str) -> dict[str, Any] | None:
        """The container ``name`` as ``inspect`` describes it; None when there is none."""
        done = await self.call("container", "inspect", "--format", "json", name)
        if done.code != 0:
            if any(words in done.stderr.decode(errors="replace").lower() for words in _NO_SUCH):
                return None
            raise EngineError(_last_words(done.stderr))
        found = json.loads(done.stdout or b"[]")
        return found[0] if found else None

    async def containers(self, filters: Sequence[str]) -> list[dict[str, Any]]:
        """Every container (running or not) that matches all ``filters`` (``label=k=v``)."""
        args = [arg for value in filters for arg in ("--filter", value)]
        listed = json.loads(await self.check("ps", "--all", *args, "--format", "json") or b"[]")
        return [c for c in listed if isinstance(c, dict)]

    async def remove(self, *names: str) -> None:
        """Remove the containers ``names`` at once (SIGKILL), those that exist."""
        if names:
            await self.check("rm", "--force", "--ignore", "--time", "0", *names)

    async def wait(self, name: str) -> None:
        """Until the container has ended (or is gone). podman learns of an exit from the
        monitor's cleanup command; where that fails (a runroot of more than 50 characters),
        ``wait`` gives up on it only after 20 s."""
        await self.call("wait", name, within=None)

    async def stop(self, name: str, grace_s: int) -> None:
        """SIGTERM to the container's init, SIGKILL after ``grace_s`` seconds."""
        await self.call("stop", "--ignore", "--time", str(grace_s), name, within=grace_s + _CALL_S)

    # --- images ----------------------------------------------------------------------------

    async def image_size(self, image: str) -> int | None:
        try:
            out = await self.check("image", "inspect", "--format", "{{.Size}}", image)
        except EngineError as exc:
            log.warning("image.size_unknown", image=image, error=str(exc))
            return None
        text = out.decode().strip()
        return int(text) if text.isdigit() else None


def _last_words(stderr: bytes) -> str:
    return engine_error(stderr)
