"""The processes a bench started: what they use (from ``/proc``) and ending them."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from services.core.valkey import ValkeyProcess

Work = Callable[[ValkeyProcess, Path], Coroutine[Any, Any, int]]


def on_a_server(name: str, work: Work) -> int:
    """``work(server, workdir)`` on a fresh ``valkey-server`` (AOF on, ``appendfsync
    always``) in a temporary directory, both gone after it: what a bench returns."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        workdir = Path(tmp)
        with ValkeyProcess(workdir / "valkey") as server:
            print(f"valkey at {server.url} (appendonly yes, appendfsync always)", flush=True)
            return asyncio.run(work(server, workdir))


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (0 for no process)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has been busy so far, every core and process together
    (``/proc/stat``: all but idle and iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """A process's resident set (``VmRSS``): its own memory and every page it maps, shared
    libraries included, as ``ps`` and ``top`` show it."""
    return _field(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid: int) -> int:
    """A process's proportional set: each shared page divided among the processes that map
    it, so the sum over processes is the memory they take together."""
    return _field(f"/proc/{pid}/smaps_rollup", "Pss:")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while we looked
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def _field(path: str, name: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} in {path}")


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
