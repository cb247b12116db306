"""``mcli dev up``, ``status``, ``env`` and ``down`` on a real local stack of their own (issues
22 and 13): the supervisor starts again whatever dies (a service, the Valkey server, itself
through ``dev up``), ``down`` leaves no rank and no process, and ``dev env`` points MosaicML's
client at the stack's API as its admin."""

from __future__ import annotations

import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.processes import children
from cli.stack import LocalStack
from cli.stackfiles import Pid, Record
from cli.stackkey import key_path
from cli.stackready import operator_store
from events.codec import Recorded
from events.identity import parse_key
from events.model import NodeRegistered
from events.status import RunStatus
from services.node_agent.process.rankdir import local_ranks
from tests.e2e.denials import denials
from tests.e2e.mcli_helpers import ROOT, USER, Mcli, wait_for
from tests.integration.api import real_client
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e
SMALL = ("--nodes", "1", "--gpus-per-node", "2")
_ROW = re.compile(r"^(\S+)\s+(\d+|-)\s+(\w+)\s+(\d+|-)\s+(.+?)\s*$")


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Mcli]:
    """``mcli`` finding its local stack under a home of its own, as a user's does; whatever
    the test started is brought down at the end."""
    home = tmp_path / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RUNPLANE_REDIS_URL", "RUNPLANE_GPU_PRICES")
    }
    env |= {"RUNPLANE_HOME": str(home), "RUNPLANE_USER": USER, "TZ": "UTC", "COLUMNS": "200"}
    runner = Mcli(env=env, stack=LocalStack(home))
    try:
        yield runner
        if (stack := LocalStack.find(home)) is not None:
            assert not denials(stack), denials(stack)
    finally:
        runner("dev", "down", timeout=120)


def running(dev: Mcli) -> LocalStack:
    stack = LocalStack.find(dev.stack.state_dir)
    assert stack is not None
    return stack


def alive(pid: int | None) -> bool:
    return pid is not None and Pid.of(pid) is not None


def status_rows(dev: Mcli) -> dict[str, tuple[str, str, str, str]]:
    """``mcli dev status``'s table: each process's pid, status, restarts and last exit."""
    rows = {}
    for line in dev.ok("dev", "status").splitlines()[2:]:
        if line.startswith(("metrics: ", "isolation: ", "console: ")):  # below the table
            continue
        match = _ROW.match(line)
        assert match, line
        rows[match[1]] = (match[2], match[3], match[4], match[5])
    return rows


def record(dev: Mcli, name: str) -> Record:
    return running(dev).records()[name]


async def registrations(stack: LocalStack, node: str) -> int:
    store = operator_store(stack)
    try:
        history = await store.history(f"node:{node}")
    finally:
        await store.close()
    return sum(isinstance(record.event, NodeRegistered) for record in history)


async def whole_log(stack: LocalStack) -> list[Recorded]:
    store = operator_store(stack)
    try:
        partitions = range(store.settings.partitions)
        return [r for p in partitions for r in await store.read_log(p, count=1_000_000)]
    finally:
        await store.close()


async def test_a_killed_scheduler_comes_back_by_itself_and_places_what_came_meanwhile(
    dev: Mcli,
) -> None:
    dev.ok("dev", "up", *SMALL)
    stack = running(dev)
    supervisor = stack.supervisor()
    scheduler = stack.status()["scheduler"]
    assert supervisor is not None
    assert scheduler is not None
    # The supervisor is held still while the scheduler is dead, so the run is surely submitted
    # before the scheduler is back; it notices the death once it goes on.
    os.kill(supervisor.pid, signal.SIGSTOP)
    try:
        os.kill(scheduler, signal.SIGKILL)
        await eventually(lambda: not alive(scheduler), what="the scheduler to be gone")
        name = dev.submit("hello")
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)
    await wait_for(stack, name, S.COMPLETED)
    pid, state, restarts, last_exit = status_rows(dev)["scheduler"]
    assert (state, restarts, last_exit) == ("Running", "1", "SIGKILL")
    assert int(pid) != scheduler
    assert status_rows(dev)["projector"][1:3] == ("Running", "0")


async def test_a_killed_valkey_server_comes_back_with_every_acknowledged_event(
    dev: Mcli,
) -> None:
    dev.ok("dev", "up", *SMALL)
    stack = running(dev)
    names = [dev.submit("hello") for _ in range(3)]  # each acknowledged: "submitted"
    before = await whole_log(stack)
    server = stack.server_pid()
    assert server is not None
    os.kill(server, signal.SIGKILL)
    await eventually(
        lambda: record(dev, "valkey").restarts == 1 and record(dev, "valkey").running(),
        what="the supervisor to start the server again",
    )
    after = await whole_log(stack)
    assert [r.position for r in after[: len(before)]] == [r.position for r in before]
    for name in names:
        await wait_for(stack, name, S.COMPLETED)
    assert status_rows(dev)["valkey"][1:] == ("Running", "1", "SIGKILL")


async def test_dev_up_brings_back_a_node_agent_held_down(dev: Mcli) -> None:
    dev.ok("dev", "up", "--nodes", "2", "--gpus-per-node", "2")
    stack = running(dev)
    assert await registrations(stack, "node-1") == 1
    stack.kill("node-1")  # kill -9, and the supervisor leaves it down
    assert stack.status()["node-1"] is None
    assert status_rows(dev)["node-1"][:2] == ("-", "Stopped")

    up = dev("dev", "up")
    assert up.returncode == 0, up.stderr
    assert "already running" not in up.stderr
    assert "Started node-1 again" in up.stdout
    assert await registrations(stack, "node-1") == 2  # `up` returned once it registered
    assert running(dev).missing() == []
    again = dev("dev", "up")  # nothing missing now
    assert again.returncode == 0
    assert "already running" in again.stderr


async def test_dev_up_starts_a_dead_supervisor_again_which_keeps_the_stack(dev: Mcli) -> None:
    dev.ok("dev", "up", *SMALL)
    stack = running(dev)
    supervisor = stack.supervisor()
    assert supervisor is not None
    pids = stack.status()
    os.kill(supervisor.pid, signal.SIGKILL)
    projector = pids["projector"]
    assert projector is not None
    os.kill(projector, signal.SIGKILL)  # while no supervisor watches
    await eventually(lambda: not alive(projector), what="the projector to be gone")
    assert "⚠ The stack's supervisor is not running" in dev("dev", "status").stderr

    up = dev.ok("dev", "up")
    assert "Started the stack's supervisor again" in up
    assert "Started projector again" in up
    now = running(dev).status()
    assert {n: p for n, p in now.items() if n != "projector"} == {
        n: p for n, p in pids.items() if n != "projector"
    }, "what ran was adopted, not started twice"
    assert status_rows(dev)["projector"][1:] == ("Running", "1", "unknown")
    # The new supervisor watches what it adopted.
    scheduler = now["scheduler"]
    assert scheduler is not None
    os.kill(scheduler, signal.SIGKILL)
    await eventually(
        lambda: record(dev, "scheduler").restarts == 1 and record(dev, "scheduler").running(),
        what="the scheduler to be started again",
    )


async def test_dev_down_stops_a_running_run_and_leaves_no_rank_and_no_process(
    dev: Mcli,
) -> None:
    dev.ok("dev", "up", "--nodes", "1", "--gpus-per-node", "2", "--grace-period", "2")
    name = dev.submit("long")
    stack = running(dev)
    await wait_for(stack, name, S.RUNNING)
    [rank] = local_ranks(stack.state_dir / "nodes" / "node-0")
    command = rank.command_pid()
    assert rank.shim_alive()
    assert alive(command)
    supervisor = stack.supervisor()
    assert supervisor is not None
    processes = [supervisor.pid, stack.server_pid(), *stack.status().values()]
    processes += [child for pid in processes if pid is not None for child in children(pid)]
    assert len(processes) >= 9  # the supervisor, 6 processes, the api, a shim fork server

    down = dev("dev", "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert f"✔ Stopped run {name} (it was Running)" in down.stdout
    assert "Local stack stopped" in down.stdout
    assert "Killed rank" not in down.stderr  # it ended as a stop ends it, not killed
    assert not rank.shim_alive()
    assert not alive(command)
    assert [pid for pid in processes if alive(pid)] == []


def _exports(dev: Mcli) -> dict[str, str]:
    env = dev("dev", "env")
    assert env.returncode == 0, env.stderr
    lines = env.stdout.splitlines()
    assert len(lines) == 2, env.stdout
    found = {}
    for line in lines:
        match = re.fullmatch(r"export (MOSAICML_API_ENDPOINT|MOSAICML_API_KEY)=(\S+)", line)
        assert match, line
        found[match[1]] = match[2]
    return found


def _user_of(endpoint: str, key: str) -> httpx.Response:
    query = {"query": "{ getUsers(getUsersData: {}) { id email } }"}
    return httpx.post(endpoint, json=query, headers={"Authorization": key}, timeout=10)


def test_dev_env_points_at_the_api_as_the_stacks_admin(dev: Mcli) -> None:
    missing = dev("dev", "env")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.strip().endswith("no local stack: start one with mcli dev up")

    up = dev("dev", "up", *SMALL)
    assert up.returncode == 0, up.stderr
    stack = running(dev)
    assert f"API: {stack.api_url}" in up.stdout
    assert f"console: {stack.console_url}" in up.stdout
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/graphql", stack.api_url)
    exports = _exports(dev)
    endpoint, key = exports["MOSAICML_API_ENDPOINT"], exports["MOSAICML_API_KEY"]
    assert endpoint == stack.api_url
    answer = _user_of(endpoint, key)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["getUsers"] == [{"id": USER, "email": USER}]
    wrong = _user_of(endpoint, key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB"))
    assert wrong.json()["errors"][0]["extensions"]["code"] == 401

    path = key_path(stack.state_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    parsed = parse_key(key)  # a secret may hold "_" itself (``secrets.token_urlsafe``)
    assert parsed is not None
    secret = parsed[1]
    assert secret not in up.stdout + up.stderr
    for written in stack.state_dir.rglob("*"):
        if written.is_file() and written != path:
            assert secret.encode() not in written.read_bytes(), written

    # A second `up` keeps the key; so does one after `down`; a lost key file gets a new key.
    dev.ok("dev", "up")
    assert _exports(dev)["MOSAICML_API_KEY"] == key
    dev.ok("dev", "down")
    dev.env |= exports  # as after `eval "$(mcli dev env)"`: the key reaches no service, no run
    dev.ok("dev", "up", *SMALL)
    assert _exports(dev)["MOSAICML_API_KEY"] == key
    for pid in running(dev).status().values():
        assert pid is not None
        assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    dev.ok("dev", "down")
    path.unlink()
    dev.ok("dev", "up", *SMALL)
    fresh = _exports(dev)
    assert fresh["MOSAICML_API_KEY"] != key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    answer = _user_of(fresh["MOSAICML_API_ENDPOINT"], fresh["MOSAICML_API_KEY"])
    assert answer.json()["data"]["getUsers"] == [{"id": USER, "email": USER}]


def test_the_real_client_works_with_dev_envs_exports(dev: Mcli, tmp_path: Path) -> None:
    mcli = real_client.mcli_bin()
    dev.ok("dev", "up", *SMALL)
    env = real_client.client_env(tmp_path / "client-home", "unset", "unset")
    env |= {"RUNPLANE_HOME": dev.env["RUNPLANE_HOME"], "RUNPLANE_USER": USER}
    dev_env = shlex.join([sys.executable, "-m", "cli.main", "dev", "env"])
    script = f'eval "$({dev_env})" && exec {shlex.quote(str(mcli))} get clusters'
    done = subprocess.run(
        ["bash", "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "local" in done.stdout, done.stdout
