"""The unmodified ``mosaicml-cli`` 0.8.3 against a local stack, as a team's users would point it
(``eval "$(mcli dev env)"``): runs that really run, their logs over the WebSocket, every request.
The integration tests (tests/integration/api) cover each protocol and each input one by one;
this is the whole path, once."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.stackkey import read_key
from events.status import RunStatus
from tests.e2e.mcli_helpers import EXAMPLES, Mcli, running_stack, wait_for
from tests.integration.api.real_client import client_env, mcli_bin
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e
DONE = (S.COMPLETED, S.FAILED, S.STOPPED)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("real") / "stack") as runner:
        yield runner


class Real:
    """The real client, as the stack's admin."""

    def __init__(self, stack: Mcli, home: Path) -> None:
        key = read_key(stack.stack.state_dir)
        assert key is not None
        self.env = client_env(home, stack.stack.api_url, key)
        self.binary = mcli_bin()

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            cwd=self.env["HOME"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, f"mcli {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def submit(self, example: str, *extra: str) -> tuple[str, str]:
        out = self.ok("run", "-f", str(EXAMPLES / f"{example}.yaml"), *extra)
        match = re.search(r"Run (\S+) (?:submitted|started)", out)
        assert match, out
        return match[1], out


@pytest.fixture(scope="module")
def real(stack: Mcli, tmp_path_factory: pytest.TempPathFactory) -> Real:
    return Real(stack, tmp_path_factory.mktemp("home"))


async def test_a_run_followed_to_its_end_then_read_every_way(stack: Mcli, real: Real) -> None:
    name, out = real.submit("hello", "--follow")
    assert f"hello from rank 0 of 1, run {name}" in out
    run = await wait_for(stack.stack, name, *DONE)
    assert run.status is S.COMPLETED
    assert name in real.ok("get", "runs", "--status", "completed")
    described = real.ok("describe", "run", name)
    assert name in described
    assert "team: demo" in described
    assert "hello from rank 0" in real.ok("logs", name, "--tail", "1")
    assert name in real.ok("get", "runs", "--cluster", "local")
    assert "local" in real.ok("get", "clusters")
    assert "a100_80gb" in real.ok("util")


async def test_the_first_failed_rank_is_read_with_failed(stack: Mcli, real: Real) -> None:
    name, _ = real.submit("fail-rank1")
    run = await wait_for(stack.stack, name, *DONE, within=90)
    assert run.status is S.FAILED
    assert "rank 1: loss is NaN, giving up" in real.ok("logs", name, "--failed")


async def test_stop_restart_update_and_delete_a_long_run(stack: Mcli, real: Real) -> None:
    name, _ = real.submit("long")
    await wait_for(stack.stack, name, S.RUNNING)
    assert "Stopped" in real.ok("stop", "run", name, "-y")
    await wait_for(stack.stack, name, S.STOPPED)
    real.ok("update", "run", name, "--priority", "low", "--max-retries", "2")
    assert "resubmitted" in real.ok("run", "-r", name)
    await wait_for(stack.stack, name, S.RUNNING, resumption=1)
    real.ok("stop", "run", name, "-y")
    await wait_for(stack.stack, name, S.STOPPED, resumption=1)
    real.ok("delete", "run", name, "-y")

    def shown_deleted() -> bool:
        return f"{name} (Deleted)" in real.ok("get", "runs", "--include-deleted")

    await eventually(shown_deleted, what=f"{name} shown deleted")


SDK = """
from mcli import RunConfig, create_run, get_run, get_run_logs, stop_run, wait_for_run_status
run = create_run(RunConfig.from_file({hello!r}))
run = wait_for_run_status(run.name, 'COMPLETED', timeout=90)
print('status', get_run(run.name).status.value)
print('logs', ''.join(get_run_logs(run.name)).strip())
long = create_run(RunConfig.from_file({long!r}))
wait_for_run_status(long.name, 'RUNNING', timeout=90)
print('stopped', stop_run(long.name).name == long.name)
"""


def test_the_real_sdk(real: Real) -> None:
    script = SDK.format(hello=str(EXAMPLES / "hello.yaml"), long=str(EXAMPLES / "long.yaml"))
    done = subprocess.run(
        [str(real.binary.with_name("python")), "-c", script],
        env=real.env,
        cwd=real.env["HOME"],  # not the repository, whose own mcli package would shadow it
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status COMPLETED" in done.stdout
    assert "logs hello from rank 0 of 1" in done.stdout
    assert "stopped True" in done.stdout
