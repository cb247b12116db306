"""The node's own health check (Slurm's ``HealthCheckProgram``): an operator's command, run
every ``health_check_interval_s``; a non-zero exit, a kill or a timeout is a failure whose
reason is the command's output.

Invariants: one run at a time; a failure is reported once, and again only after a pass (a node
that stays sick is not re-reported every interval); the reason is one line, bounded
(``MAX_REASON``), so an event stays small whatever the command prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

MAX_REASON = 500


def reason_of(code: int | None, output: bytes) -> str:
    """``health check failed (exit 1): <its output's lines, joined>``: what an admin reads in
    ``mcli admin nodes list`` (the command is the node's setting, in its log; not repeated)."""
    said = " | ".join(line.strip() for line in output.decode(errors="replace").splitlines())
    said = said.strip(" |") or "no output"
    how = "timed out" if code is None else f"exit {code}"
    text = f"health check failed ({how}): {said}"
    return text if len(text) <= MAX_REASON else "..." + text[-(MAX_REASON - 3) :]


async def run_once(command: str, timeout_s: float) -> str | None:
    """The command's failure reason, or None when it exits 0."""
    process = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its whole group is killed on a timeout
    )
    try:
        async with asyncio.timeout(timeout_s):
            output, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return reason_of(None, b"")
    if process.returncode == 0:
        return None
    return reason_of(process.returncode, output)


async def keep_checking(
    command: str,
    interval_s: float,
    timeout_s: float,
    on_failure: Callable[[str], Awaitable[None]],
) -> None:
    """Run ``command`` now and every ``interval_s``; ``on_failure(reason)`` at each new failure."""
    failing = False
    while True:
        try:
            reason = await run_once(command, timeout_s)
        except OSError as exc:  # the shell itself could not start
            reason = f"health check {command!r} could not run: {exc}"
        if reason is None:
            if failing:
                log.info("node.health_check_passed")
            failing = False
        elif not failing:
            failing = True
            log.warning("node.health_check_failed", reason=reason)
            try:
                await on_failure(reason)
            except Exception:  # reported, and tried again at the next failure
                log.exception("node.health_check_report_failed")
                failing = False
        await asyncio.sleep(interval_s)
