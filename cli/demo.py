"""``python -m cli.demo`` (``make demo``): the whole product in two minutes on a fresh machine.

Starts a private local stack (its own state directory, so it never touches yours), submits
the runs in ``examples/`` (one that completes, one that fails on rank 1 of 2, one stopped and
restarted, one retried by ``max_retries``, one queued behind a larger run), shows ``get runs``,
``describe run`` with several resumptions, ``logs --failed``, ``util`` and ``billing``, and
stops the stack, whatever happened.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cli.main import log_aside
from cli.models import Run
from cli.sdk import get_run
from events.status import RunStatus

S = RunStatus
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_DEADLINE_S = 120.0


def mcli(*args: str, quiet: bool = False) -> str:
    """Run ``mcli`` as a user would, show the command and its output; its stdout."""
    if not quiet:
        sys.stdout.write(f"\n$ mcli {' '.join(args)}\n")
        sys.stdout.flush()
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, check=False
    )
    if not quiet:
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"demo: `mcli {' '.join(args)}` failed ({done.returncode})")
    return done.stdout


def submit(example: str) -> str:
    out = mcli("run", "-f", str(EXAMPLES / f"{example}.yaml"))
    match = re.search(r"✔ Run (\S+) (?:re)?submitted\.", out)
    if match is None:
        raise SystemExit(f"demo: no run name in {out!r}")
    return match[1]


def wait(name: str, what: str, until: Callable[[Run], bool]) -> Run:
    """Poll the run (the SDK) until ``until`` holds; the demo gives up after a while."""
    deadline = time.monotonic() + _DEADLINE_S
    while True:
        run = get_run(name)
        if until(run):
            return run
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {name} did not become {what} (it is {run.status})")
        time.sleep(0.3)


def status(target: RunStatus, resumption: int = 0) -> Callable[[Run], bool]:
    return lambda run: run.latest_resumption.index == resumption and run.status is target


def ended(resumption: int = 0) -> Callable[[Run], bool]:
    return lambda run: run.latest_resumption.index == resumption and run.status.is_terminal()


def scenario() -> None:
    hello = submit("hello")
    failing = submit("fail-rank1")
    flaky = submit("flaky")
    long = submit("long")
    wait(long, "running", status(S.RUNNING))
    mcli("stop", "run", long, "-y")
    wait(long, "stopped", status(S.STOPPED))
    mcli("run", "-r", long)
    wait(long, "running again", status(S.RUNNING, resumption=1))
    mcli("logs", long, "--tail", "3")
    mcli("stop", "run", long, "-y")
    wait(long, "stopped", status(S.STOPPED, resumption=1))
    for name, resumption in ((hello, 0), (failing, 0), (flaky, 2)):
        wait(name, "finished", ended(resumption))
    big = submit("big")
    wait(big, "running", status(S.RUNNING))
    small = submit("small-after")
    wait(small, "queued", status(S.QUEUED))
    mcli("util")
    wait(small, "finished", ended())
    mcli("get", "runs")
    mcli("describe", "run", flaky)
    mcli("describe", "run", long)
    mcli("logs", failing, "--failed")
    mcli("util")
    mcli("billing", "--by", "run")
    mcli("billing", "--by", "user")


def main() -> int:
    home = os.environ.get("RUNPLANE_DEMO_HOME") or tempfile.mkdtemp(prefix="runplane-demo-")
    os.environ["RUNPLANE_HOME"] = home
    os.environ.pop("RUNPLANE_REDIS_URL", None)
    os.environ.pop("RUNPLANE_ARCHIVE_DIR", None)
    log_aside()  # the SDK's folds run here too: their log lines stay off the demo's output
    mcli("dev", "up", "--nodes", "2", "--gpus-per-node", "8", "--grace-period", "5")
    try:
        scenario()
    finally:
        mcli("dev", "down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
