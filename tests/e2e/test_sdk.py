"""``from mcli import ...`` end to end: mcli's SDK functions and objects against a local stack.

The SDK is synchronous, so these tests are plain functions; it finds the stack through the
environment (``RUNPLANE_REDIS_URL``) as a user's code would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import mcli
from mcli import (
    Run,
    RunConfig,
    RunStatus,
    create_run,
    delete_run,
    follow_run_logs,
    get_cluster,
    get_clusters,
    get_run,
    get_run_logs,
    get_runs,
    start_run,
    stop_run,
    update_run,
    wait_for_run_status,
    watch_run_status,
)
from tests.e2e.mcli_helpers import EXAMPLES, USER, Mcli, running_stack, sdk_env
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("sdk") / "stack") as runner, sdk_env(runner.stack):
        yield runner


def config(command: str, name: str = "sdk", **scheduling: object) -> RunConfig:
    return RunConfig(
        name=name,
        image="mosaicml/pytorch:latest",
        command=command,
        compute={"cluster": "local", "gpus": 2},
        scheduling=dict(scheduling),
        metadata={"owner": "sdk-test"},
    )


def test_a_run_through_its_lifecycle(stack: Mcli) -> None:
    run = create_run(config("echo hello sdk; echo rank=$NODE_RANK"))
    assert run.name.startswith("sdk-")
    assert run.status in (S.PENDING, S.QUEUED, S.STARTING, S.RUNNING, S.TERMINATING, S.COMPLETED)
    assert run.created_by == USER
    assert run.submitted_config.command == "echo hello sdk; echo rank=$NODE_RANK"
    done = wait_for_run_status(run, RunStatus.COMPLETED, timeout=60)
    assert done.status is S.COMPLETED
    assert done.is_deleted is False
    assert done.resumption_count == 1
    first = done.resumptions[0]
    assert (first.index, first.gpus, first.status) == (0, 2, S.COMPLETED)
    assert isinstance(first.started_at, datetime)
    assert isinstance(first.ended_at, datetime)
    assert first.started_at <= first.ended_at
    assert done.started_at == first.started_at
    assert done.completed_at == first.ended_at
    assert done.get_gpu_hours() == pytest.approx(
        2 * (first.ended_at - first.started_at).total_seconds() / 3600
    )
    phases = [phase.status for phase in done.lifecycle]
    assert phases == [S.PENDING, S.QUEUED, S.STARTING, S.RUNNING, S.TERMINATING, S.COMPLETED]
    assert [node.rank for node in done.nodes] == [0]
    assert done.nodes[0].status is S.COMPLETED
    assert done.cumulative_running_time >= 0
    assert done.refresh().status is S.COMPLETED
    lines = list(get_run_logs(done))
    assert lines == ["hello sdk\n", "rank=0\n"]
    assert list(get_run_logs(done.name, tail=1)) == ["rank=0\n"]
    assert list(get_run_logs(done, 0)) == lines
    assert done.name in [r.name for r in get_runs(statuses=[RunStatus.COMPLETED])]


def test_get_run_is_never_stale_after_a_write(stack: Mcli) -> None:
    run = create_run(config("sleep 600", name="sleeper", max_retries=1))
    assert get_run(run.name).status in (S.PENDING, S.QUEUED, S.STARTING, S.RUNNING)
    wait_for_run_status(run, S.RUNNING, timeout=60)
    stopping = stop_run(run)
    assert stopping.status in (S.TERMINATING, S.STOPPED)
    stopped = wait_for_run_status(run, S.STOPPED, timeout=60)
    assert stopped.status is S.STOPPED
    updated = update_run(stopped, priority="low", max_retries=3, max_duration=1.5)
    assert (updated.priority, updated.max_retries, updated.max_duration) == ("low", 3, 1.5)
    restarted = start_run(run.name)
    # The new resumption is there at once; the scheduler may already have moved it on.
    assert restarted.latest_resumption.index == 1
    assert restarted.status in (S.PENDING, S.QUEUED, S.STARTING, S.RUNNING)
    assert restarted.name == run.name
    wait_for_run_status(restarted, S.RUNNING, timeout=60)
    deleted = delete_run(restarted)
    assert deleted.status in (S.TERMINATING, S.STOPPED)
    gone = wait_for_run_status(run, S.STOPPED, timeout=60)
    assert [r.status for r in gone.resumptions] == [S.STOPPED, S.STOPPED]
    assert gone.cumulative_pending_time >= 0


def test_follow_and_watch_until_the_end(stack: Mcli) -> None:
    run = create_run(config("for i in 1 2 3; do echo step $i; sleep 0.3; done", name="steps"))
    seen = [r.status for r in watch_run_status(run)]
    assert seen[-1] is S.COMPLETED
    assert seen == sorted(seen)  # mcli's order: never backwards
    assert list(follow_run_logs(run)) == ["step 1\n", "step 2\n", "step 3\n"]


def test_failed_logs_and_their_rules(stack: Mcli) -> None:
    run = create_run(RunConfig.from_file(EXAMPLES / "fail-rank1.yaml"))
    failed = wait_for_run_status(run, S.FAILED, timeout=60)
    assert failed.status is S.FAILED
    assert failed.reason == "Error (exit code 3)"
    assert "rank 1: loss is NaN, giving up\n" in list(get_run_logs(run, failed=True))
    assert any("rank 0 of 2" in line for line in get_run_logs(run, node_rank=0))
    with pytest.raises(ValueError, match="failed"):
        get_run_logs(run, rank=1, failed=True)


def test_clusters_and_errors(stack: Mcli) -> None:
    cluster = get_cluster("local")
    utils = cluster.utilization.cluster_instance_utils
    assert [(u.instance.gpu_type, u.instance.gpus, u.instance.nodes) for u in utils] == [
        ("a100_80gb", 8, 2)
    ]
    assert sum(u.gpus_total for u in utils) == 16
    assert sum(u.gpus_available for u in utils) + sum(u.gpus_used for u in utils) == 16
    assert isinstance(cluster.utilization.active_runs_by_user, list)
    assert [c.name for c in get_clusters()] == ["local"]
    with pytest.raises(mcli.NotFound, match="Cluster nowhere not found"):
        get_cluster("nowhere")
    with pytest.raises(mcli.NotFound, match="Run nope-abcdef not found"):
        get_run("nope-abcdef")
    bad = config("echo")
    bad.compute = {"cluster": "nowhere", "gpus": 1}
    with pytest.raises(mcli.ClientError, match="known clusters: local"):
        create_run(bad)
    with pytest.raises(mcli.ClientError, match="max_retries"):
        update_run("nope-abcdef", max_retries=-1)


def test_from_file_and_clone(stack: Mcli, tmp_path: Path) -> None:
    run = create_run(RunConfig.from_file(EXAMPLES / "hello.yaml"))
    assert run.metadata == {"team": "demo"}
    clone = wait_for_run_status(run, S.COMPLETED, timeout=60).clone(name="hello-clone")
    assert clone.name.startswith("hello-clone-")
    assert clone.run_uid != run.run_uid
    assert clone.submitted_config.command == run.submitted_config.command


def names(runs: Sequence[Run]) -> set[str]:
    return {run.name for run in runs}


async def test_arguments_as_mcli_takes_them(stack: Mcli) -> None:
    """A dict config; a single status or a list; times as the CLI's --after/--before take them
    (a time ago, a date) or datetimes; unknown statuses and empty updates are ValueErrors."""
    run = create_run(
        {
            "name": "as-dict",
            "image": "mosaicml/pytorch:latest",
            "command": "sleep 600",
            "compute": {"cluster": "local", "gpus": 1},
        }
    )
    assert run.name.startswith("as-dict-")
    assert run.submitted_config.command == "sleep 600"
    wait_for_run_status(run, S.RUNNING, timeout=60)
    await eventually(
        lambda: run.name in names(get_runs(statuses="RUNNING")),
        what="get_runs(statuses='RUNNING') to list the running run",
    )
    assert run.name in names(get_runs(statuses=["running", S.QUEUED]))
    assert run.name in names(get_runs(statuses=S.RUNNING))
    assert run.name not in names(get_runs(statuses="COMPLETED"))
    assert run.name in names(get_runs(after="1h"))
    assert run.name in names(get_runs(before="2030-01-01"))
    assert run.name not in names(get_runs(before="1h"))
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert run.name in names(get_runs(after=an_hour_ago, before=datetime(2030, 1, 1)))
    assert run.name not in names(get_runs(before=an_hour_ago))
    with pytest.raises(ValueError, match=r"unknown status 'bogus' \(one of Pending, .*Failed\)"):
        get_runs(statuses=["bogus"])
    with pytest.raises(ValueError, match="time ago"):
        get_runs(after="yesterday-ish")
    with pytest.raises(ValueError, match=r"unknown status 'DONE' \(one of .*Completed"):
        wait_for_run_status(run, "DONE", timeout=5)
    with pytest.raises(ValueError, match="nothing to update: give priority, preemptible"):
        update_run(run)
    assert get_run(run).status is S.RUNNING
    stop_run(run)
    assert wait_for_run_status(run, S.STOPPED, timeout=60).status is S.STOPPED
