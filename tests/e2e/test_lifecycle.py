"""Every run through the whole lifecycle, on the real stack (issue 3)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from events import commands
from events.lifecycle import AttemptState
from events.status import RunStatus
from tests.e2e.driver import SHAPES, USER, Driver, gpu_overlaps, spec
from tests.ranks import open_to_ranks, trusting_git

S = RunStatus
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("stack", list(SHAPES), indirect=True),
]


def span(attempt: AttemptState) -> tuple[int, int]:
    entered = dict(attempt.timeline)
    return entered[S.STARTING], entered[attempt.status]


async def test_hello_completes(driver: Driver) -> None:
    run_id = await driver.submit(spec("echo hello"))
    state = await driver.wait_for(run_id, S.COMPLETED, S.FAILED, S.STOPPED)
    assert state.status is S.COMPLETED
    phases = [status for status, _ in state.latest.timeline]
    assert phases == [S.PENDING, S.QUEUED, S.STARTING, S.RUNNING, S.TERMINATING, S.COMPLETED]
    assert state.latest.ranks[0].exit_code == 0


async def test_a_failing_command_fails_with_its_exit_code(driver: Driver) -> None:
    run_id = await driver.submit(spec("echo about to fail; exit 3"))
    state = await driver.wait_for(run_id, S.COMPLETED, S.FAILED, S.STOPPED)
    assert state.status is S.FAILED
    assert state.latest.reason is not None
    assert (state.latest.reason.code, state.latest.reason.exit_code) == ("Error", 3)
    assert state.latest.reason.failed_rank == 0


async def test_two_nodes_get_ranks_0_and_1_and_distinct_gpus(driver: Driver) -> None:
    run_id = await driver.submit(spec("echo rank=$NODE_RANK gpus=$CUDA_VISIBLE_DEVICES", gpus=16))
    state = await driver.wait_for(run_id, S.COMPLETED, S.FAILED)
    assert state.status is S.COMPLETED
    ranks = state.latest.ranks
    assert [r.rank for r in ranks] == [0, 1]
    assert ranks[0].node != ranks[1].node
    assert all(len(r.gpus) == 8 for r in ranks)


async def test_two_hundred_concurrent_runs_never_share_a_gpu(driver: Driver) -> None:
    run_ids = await asyncio.gather(*(driver.submit(spec("true")) for _ in range(200)))
    states = [
        await driver.wait_for(run_id, S.COMPLETED, S.FAILED, S.STOPPED, within=180)
        for run_id in run_ids
    ]
    assert all(state.status is S.COMPLETED for state in states)
    spans = {f"{s.run_id}/{a.index}": span(a) for s in states for a in s.attempts}
    placements = await driver.placements()
    assert len(placements) == 200
    assert gpu_overlaps(placements, spans) == []


async def test_stop_of_a_running_run_ends_it_stopped_by_sigterm(driver: Driver) -> None:
    run_id = await driver.submit(spec("echo started; sleep 1000"))
    await driver.wait_for(run_id, S.RUNNING)
    await driver.request(run_id, commands.StopRun(actor=USER))
    state = await driver.wait_for(run_id, S.STOPPED, S.FAILED, S.COMPLETED)
    assert state.status is S.STOPPED
    assert state.latest.ranks[0].signal == signal.SIGTERM
    assert state.latest.stop_requested_by == USER


async def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(
    driver: Driver,
) -> None:
    run_id = await driver.submit(spec("trap '' TERM; echo started; sleep 1000 & wait"))
    await driver.wait_for(run_id, S.RUNNING)
    await driver.request(run_id, commands.StopRun(actor=USER))
    state = await driver.wait_for(run_id, S.STOPPED, S.FAILED, S.COMPLETED)
    assert state.status is S.STOPPED
    assert state.latest.ranks[0].signal == signal.SIGKILL


async def test_restart_opens_attempt_1_of_the_same_run(driver: Driver) -> None:
    run_id = await driver.submit(spec("sleep 1000"))
    await driver.wait_for(run_id, S.RUNNING)
    await driver.request(run_id, commands.StopRun(actor=USER))
    await driver.wait_for(run_id, S.STOPPED)
    await driver.request(run_id, commands.RestartRun(actor=USER))
    state = await driver.wait_for(run_id, S.RUNNING, attempt=1)
    assert [a.status for a in state.attempts] == [S.STOPPED, S.RUNNING]
    await driver.request(run_id, commands.StopRun(actor=USER))
    await driver.wait_for(run_id, S.STOPPED, attempt=1)


async def test_retries_until_the_third_attempt_succeeds(driver: Driver) -> None:
    run_id = await driver.submit(
        spec('echo attempt $RESUMPTION_INDEX; [ "$RESUMPTION_INDEX" -ge 2 ]', max_retries=2)
    )
    state = await driver.wait_for(run_id, S.COMPLETED, S.FAILED, attempt=2)
    assert state.status is S.COMPLETED
    assert [a.status for a in state.attempts] == [S.FAILED, S.FAILED, S.COMPLETED]
    assert state.user_failures == 2


async def test_no_retry_beyond_max_retries(driver: Driver) -> None:
    run_id = await driver.submit(spec("exit 1", max_retries=1))
    await driver.wait_for(run_id, S.FAILED, attempt=1)
    await driver.settled("scheduler")  # it has seen the failure and decided
    state = await driver.run(run_id)
    assert len(state.attempts) == 2


async def test_a_higher_priority_run_preempts_a_preemptible_one(driver: Driver) -> None:
    low = await driver.submit(spec("sleep 1000", gpus=32, priority="low", preemptible=True))
    await driver.wait_for(low, S.RUNNING)
    high = await driver.submit(spec("echo urgent", gpus=8, priority="auto"))
    await driver.wait_for(high, S.COMPLETED)
    state = await driver.run(low)
    first = state.attempts[0]
    assert first.status is S.STOPPED
    assert first.reason is not None
    assert first.reason.code == "Preempted"
    assert len(state.attempts) == 2  # back in the queue as a new attempt
    await driver.request(low, commands.StopRun(actor=USER))
    await driver.wait_for(low, S.STOPPED, attempt=1)


async def test_max_duration_stops_the_attempt(driver: Driver) -> None:
    run_id = await driver.submit(spec("sleep 1000", max_duration=1 / 3600))  # one second
    state = await driver.wait_for(run_id, S.STOPPED, S.FAILED, S.COMPLETED)
    assert state.status is S.STOPPED
    assert state.latest.reason is not None
    assert state.latest.reason.code == "MaxDurationExceeded"


async def test_integrations_run_in_order_before_the_command(driver: Driver, tmp_path: Path) -> None:
    repo = _bare_repo_with(tmp_path, "train.py", "print('trained')\n")
    package = _local_package(tmp_path, "tinypkg", "VALUE = 42\n")
    run_spec = spec(
        "python e2e-repo/train.py && python -c 'import tinypkg; print(tinypkg.VALUE)'",
        gpus=0,
    )
    run_spec.env_variables.update(trusting_git(tmp_path / "git"))
    run_spec.integrations.extend(
        [
            {"integration_type": "git_repo", "git_repo": str(repo), "path": "e2e-repo"},
            {"integration_type": "pip_packages", "packages": [str(package)]},
        ]
    )
    run_id = await driver.submit(run_spec)
    state = await driver.wait_for(run_id, S.COMPLETED, S.FAILED, within=180)
    assert state.status is S.COMPLETED, state.latest.reason


async def test_an_invalid_image_fails_with_failed_image_pull(driver: Driver) -> None:
    run_id = await driver.submit(spec("echo never", image="Not A/Valid:Image"))
    state = await driver.wait_for(run_id, S.FAILED, S.COMPLETED)
    assert state.latest.reason is not None
    assert state.latest.reason.code == "FailedImagePull"
    assert state.latest.ranks[0].exit_code is None


async def test_a_request_that_can_never_fit_is_refused(driver: Driver) -> None:
    run_id = await driver.submit(spec("true", gpus=12, nodes=1))
    state = await driver.wait_for(run_id, S.FAILED)
    assert state.latest.reason is not None
    assert state.latest.reason.code == "Unschedulable"


async def test_a_request_for_more_nodes_than_the_cluster_has_is_refused(driver: Driver) -> None:
    run_id = await driver.submit(spec("true", gpus=40))  # 5 nodes of 8; the cluster has 4
    state = await driver.wait_for(run_id, S.FAILED)
    assert state.latest.reason is not None
    assert state.latest.reason.code == "Unschedulable"
    assert "it needs 5 nodes with 8 x " in state.latest.reason.message
    assert "the cluster has 4" in state.latest.reason.message


def _bare_repo_with(tmp_path: Path, name: str, text: str) -> Path:
    work, bare = tmp_path / "work", tmp_path / "repo.git"
    work.mkdir()
    (work / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "init"], check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return open_to_ranks(bare)  # the rank clones it as its own user


def _local_package(tmp_path: Path, name: str, text: str) -> Path:
    root = tmp_path / name
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(text)
    (root / "pyproject.toml").write_text(
        "[build-system]\nrequires = ['setuptools']\nbuild-backend = 'setuptools.build_meta'\n"
        f"[project]\nname = '{name}'\nversion = '0.1'\n"
    )
    assert sys.executable  # the rank's venv inherits this interpreter's site-packages
    return open_to_ranks(root, writable=True)  # pip builds in the tree, as the rank's user
