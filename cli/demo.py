"""``python -m cli.demo`` (``make demo``): the whole product in two minutes on a fresh machine.

Starts a private local stack (its own state directory, so it never touches yours), submits
the runs in ``examples/`` (one that completes, one that fails on rank 1 of 2, one stopped and
restarted, one retried by ``max_retries``, one queued behind a larger run), shows ``get runs``,
``describe run`` with several resumptions, ``logs --failed``, ``util`` and ``billing``; adds a
second user with a key of their own, who sees only their own runs; shows the real
``mosaicml-cli`` pointed at the stack's API (when it is installed: ``.venv-mcli``); ends with
the web console's address and a key to sign in with (the one key shown: the admin's, issued for
an hour); and stops the stack, whatever happened: at once, or when Enter is pressed if the demo
runs in a terminal, so that the console can be looked at first.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cli.main import log_aside
from cli.models import Run
from cli.sdk import get_run
from cli.stack import current_user
from events.status import RunStatus

S = RunStatus
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_DEADLINE_S = 120.0


def mcli(
    *args: str,
    quiet: bool = False,
    env: dict[str, str] | None = None,
    who: str = "",
    fails: bool = False,
    program: tuple[str, ...] = (sys.executable, "-m", "cli.main"),
) -> str:
    """Run ``mcli`` as a user would (``who``, with ``env``), show the command and its output
    (``quiet``: only the command); its stdout. It must succeed, or fail when ``fails``."""
    sys.stdout.write(f"\n{who}$ mcli {' '.join(args)}\n")
    sys.stdout.flush()
    done = subprocess.run(
        [*program, *args], capture_output=True, text=True, check=False, env=os.environ | (env or {})
    )
    if not quiet:
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
    if (done.returncode != 0) != fails:
        raise SystemExit(f"demo: `mcli {' '.join(args)}` exited {done.returncode}\n{done.stderr}")
    return done.stdout


def submit(example: str, env: dict[str, str] | None = None, who: str = "") -> str:
    out = mcli("run", "-f", str(EXAMPLES / f"{example}.yaml"), env=env, who=who)
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
    second_user(hello)
    real_client()


def second_user(admins_run: str) -> None:
    """A second user with a key of their own: their runs are theirs, the admin sees all."""
    key = mcli("admin", "users", "add", "bob@example.com", quiet=True).strip()
    sys.stdout.write("(bob's key is on stdout alone: kept in a variable here, never shown)\n")
    bob = {"MOSAICML_API_KEY": key}
    submit("hello", env=bob, who="bob ")
    mcli("get", "runs", env=bob, who="bob ")
    mcli("describe", "run", admins_run, env=bob, who="bob ", fails=True)
    mcli("get", "runs", "--all-users")
    mcli("admin", "users", "list")


def real_client() -> None:
    """The real mosaicml-cli, pointed at the stack's API as the admin (``mcli dev env``)."""
    real = Path(__file__).resolve().parents[1] / ".venv-mcli" / "bin" / "mcli"
    lines = mcli("dev", "env", quiet=True).splitlines()
    sys.stdout.write("(two export lines: the API's endpoint and the admin's key)\n")
    exported = dict(shlex.split(line)[1].split("=", 1) for line in lines)
    env = exported | {"MCLI_DISABLE_UPGRADE_CHECK": "true", "COLUMNS": "160"}
    if not real.exists():
        sys.stdout.write(
            "\nThe real client is not installed here; with it (pip install mosaicml-cli==0.8.3):\n"
            '  eval "$(mcli dev env)"; mcli get runs; mcli util\n'
        )
        return
    sys.stdout.write('\n# the real mosaicml-cli 0.8.3, after eval "$(mcli dev env)":')
    mcli("get", "runs", env=env, program=(str(real),))
    mcli("util", env=env, program=(str(real),))


def console() -> None:
    """The web console's address, and a key to sign in with: the admin's, for an hour."""
    endpoint = dict(
        shlex.split(line)[1].split("=", 1) for line in mcli("dev", "env", quiet=True).splitlines()
    )["MOSAICML_API_ENDPOINT"]  # the console is at the root of the API's origin
    whoami = current_user()  # the stack's admin: who ran ``mcli dev up``
    key = mcli("admin", "keys", "issue", whoami, "--expires", "1h", quiet=True).strip()
    sys.stdout.write(
        f"\nWeb console: {endpoint.removesuffix('/graphql')}/\n"
        f"Sign in with this key of {whoami}'s (it expires in an hour): {key}\n"
    )
    if sys.stdin.isatty():
        input("\nThe stack stays up while you look: press Enter to stop it. ")


def main() -> int:
    home = os.environ.get("RUNPLANE_DEMO_HOME") or tempfile.mkdtemp(prefix="runplane-demo-")
    os.environ["RUNPLANE_HOME"] = home
    for name in ("RUNPLANE_REDIS_URL", "RUNPLANE_ARCHIVE_DIR", "MOSAICML_API_ENDPOINT"):
        os.environ.pop(name, None)
    os.environ.pop("MOSAICML_API_KEY", None)
    log_aside()  # the SDK's folds run here too: their log lines stay off the demo's output
    mcli("dev", "up", "--nodes", "2", "--gpus-per-node", "8", "--grace-period", "5")
    try:
        scenario()
        console()
    finally:
        mcli("dev", "down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
