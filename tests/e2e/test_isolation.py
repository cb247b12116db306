"""A run cannot act as its node (issue 20): on a stack started by root, each run's ranks run as
a uid of their own, in a cgroup of their own, and find nothing of the node's credentials.

One real stack of one node, so that the runs share it. A hostile run (``inrun/snoop.py``)
reads every process's environment and command line, the stack's state directory and another
run's home, and writes to Valkey with whatever it found; it finds nothing usable and still
completes. A run that daemonizes a process is stopped with all of it."""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.status import RunStatus
from services.node_agent.settings import default_homes
from tests.e2e.mcli_helpers import ROOT, Mcli, running_stack, submit, wait_for
from tests.ranks import running
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e
SNOOP = ROOT / "tests" / "e2e" / "inrun" / "snoop.py"
ROOTED = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not ROOTED, reason="ranks run as uids of their own only under an agent running as root"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("isolation") / "stack", nodes=1) as runner:
        yield runner


def home_of(mcli: Mcli, run_uid: str) -> Path:
    return default_homes(mcli.stack.state_dir / "nodes" / "node-0") / run_uid / "0" / "0"


@needs_root
async def test_a_hostile_run_finds_no_credential_of_the_node_and_still_completes(
    stack: Mcli, tmp_path: Path
) -> None:
    held = submit(stack, tmp_path, "holder", "echo mine > $HOME/workspace/note; sleep 600")
    holder = home_of(stack, (await wait_for(stack.stack, held, S.RUNNING)).run_uid)
    note = holder / "workspace" / "note"
    await eventually(note.exists, what="the holder's note")
    name = submit(
        stack,
        tmp_path,
        "snoop",
        f"{sys.executable} {SNOOP}",
        STATE_DIR=str(stack.stack.state_dir),
        OTHER_HOME=str(holder),
        VALKEY_PORT=str(stack.stack.valkey_port),
    )
    await wait_for(stack.stack, name, S.COMPLETED, within=120)
    [line] = [line for line in stack.ok("logs", name).splitlines() if line.startswith("SNOOP ")]
    report = json.loads(line.removeprefix("SNOOP "))

    assert report["uid"] != 0
    assert report["uid"] != holder.stat().st_uid  # two runs, two uids
    assert report["processes"]["environs_read"] == []  # no other process's environment
    assert report["processes"]["secrets"] == []  # no URL, no password on a command line
    assert report["own_runplane"] == []
    assert report["state_dir"] == {"listed": [], "read": []}
    assert report["other_home"] == {"listed": [], "read": []}
    assert report["own_token"]  # the probe reads what is its own: it can see
    assert report["valkey"], "the server was tried"
    for answer in report["valkey"]:
        assert answer.startswith(("-NOAUTH", "-WRONGPASS", "-ERR", "-NOPERM")), answer
    stack.ok("stop", "run", held, "-y")
    await wait_for(stack.stack, held, S.STOPPED)
    await eventually(lambda: not holder.exists(), what="the holder's home gone")


async def test_a_daemon_a_rank_started_is_stopped_with_it(stack: Mcli, tmp_path: Path) -> None:
    marker = str(random.randrange(10**6, 10**7))
    name = submit(stack, tmp_path, "daemon", f"setsid sleep {marker} & sleep 600")
    await wait_for(stack.stack, name, S.RUNNING)
    await eventually(lambda: running("sleep", marker), what="the daemon running")
    stack.ok("stop", "run", name, "-y")
    await wait_for(stack.stack, name, S.STOPPED)
    await eventually(lambda: not running("sleep", marker), what="the daemon gone", within=30)


def test_dev_status_says_how_runs_are_kept_apart(stack: Mcli) -> None:
    env = {**stack.env, "RUNPLANE_HOME": str(stack.stack.state_dir)}
    done = Mcli(env=env, stack=stack.stack)("dev", "status")
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    if ROOTED:
        assert "isolation: each run as its own uid (61184-65519)" in shown
    else:
        assert "isolation: none (not root): runs share the agent's user and its trust" in shown
