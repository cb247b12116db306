"""``mcli`` end to end: every command as a subprocess against a local stack (issue 5).

One stack (2 nodes x 8 GPUs) serves the module; tests run in order and each leaves no run
holding GPUs behind. Waits are deadlines on the run's state, never sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import pytest

from events.status import RunStatus
from projections import catalog
from tests.e2e.mcli_helpers import (
    EXAMPLES,
    ROOT,
    USER,
    Mcli,
    no_traceback,
    normalise,
    running_stack,
    wait_for,
)
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e
GOLDEN = Path(__file__).parent / "golden"
DONE = (S.COMPLETED, S.FAILED, S.STOPPED)


@pytest.fixture(scope="module")
def mcli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("cli") / "stack") as runner:
        yield runner


def json_rows(mcli: Mcli, *args: str) -> list[dict[str, Any]]:
    """``get runs -o json``: the run objects (``Run.to_dict()``)."""
    rows: list[dict[str, Any]] = json.loads(mcli.ok("get", "runs", *args, "-o", "json"))
    return rows


async def listed(mcli: Mcli, name: str, status: S, resumption: int = 0) -> dict[str, Any]:
    """Wait until ``get runs`` (the projector's rows) shows the run as given; its object."""

    def probe() -> dict[str, Any] | None:
        rows = json_rows(mcli, name, "--include-deleted")
        latest = rows[0]["resumptions"][-1] if rows else None
        shown = latest is not None and (rows[0]["status"], latest["index"]) == (status, resumption)
        return rows[0] if shown else None

    found: dict[str, Any] = await eventually(
        probe, what=f"get runs to show {name} {status}", within=30
    )
    return found


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


async def test_hello_completes_and_every_view_shows_it(mcli: Mcli) -> None:
    name = mcli.submit("hello")
    assert name.startswith("hello-world-")
    run = await wait_for(mcli.stack, name, *DONE)
    assert run.status is S.COMPLETED
    assert "hello from rank 0 of 1" in mcli.ok("logs", name)
    described = mcli.ok("describe", "run", name)
    for section in ("Run Details", "Compute Requests", "Run Metadata", "Run Nodes"):
        assert section in described
    assert "Run completed" in described
    assert "team  demo" in described
    await listed(mcli, name, S.COMPLETED)
    assert name in mcli.ok("get", "runs", "-o", "name").split()
    assert name in mcli.ok("get", "runs", "--status", "completed,failed", "-o", "name")
    assert name not in mcli.ok("get", "runs", "--status", "running", "-o", "name")
    assert mcli.ok("get", "runs", "-l", "-o", "name").split() == [name]
    events = mcli.ok("events", name).splitlines()
    assert "run.submitted" in events[0]
    assert "attempt.completed" in events[-1]
    logged = json.loads(mcli.ok("events", name, "-o", "json"))
    assert logged[0]["type"] == "run.submitted"
    assert [e["position"] for e in logged] == [line.split()[0] for line in events]
    assert [e["attempt"] for e in logged] == [0] * len(events)
    queued = next(e for e in logged if e["type"] == "attempt.queued")
    assert isinstance(queued["queue_position"], int)


async def test_rank_1_fails_and_logs_show_the_failed_rank(mcli: Mcli) -> None:
    name = mcli.submit("fail-rank1")
    run = await wait_for(mcli.stack, name, *DONE)
    assert run.status is S.FAILED
    assert run.reason == "Error (exit code 3)"
    failed = mcli.ok("logs", name, "--failed")
    assert "rank 1: loss is NaN, giving up" in failed
    assert mcli.ok("logs", name) == failed  # a FAILED run shows its first failed rank
    assert "rank 0 of 2 starting" in mcli.ok("logs", name, "--rank", "0")
    assert "Run failed with exit code 3" in mcli.ok("describe", "run", name)
    assert (await listed(mcli, name, S.FAILED))["reason_code"] == "Error"


async def test_stop_restart_stop_and_delete(mcli: Mcli) -> None:
    name = mcli.submit("long")
    await wait_for(mcli.stack, name, S.RUNNING)
    refused = mcli("stop", "run", name, input="n\n")
    assert refused.returncode == 1
    assert "Cancelled" in refused.stdout
    assert f"✔ Stopped run {name}" in mcli.ok("stop", "run", name, "-y")
    await wait_for(mcli.stack, name, S.STOPPED)
    again = mcli("stop", "run", name, "-y")
    assert again.returncode == 0
    assert f"Run {name} is already Stopped; skipping it" in again.stderr
    assert f"✔ Run {name} resubmitted." in mcli.ok("run", "-r", name)
    await wait_for(mcli.stack, name, S.RUNNING, resumption=1)
    assert "resumption 1 started" in mcli.ok("logs", name, "-t", "50")
    assert "resumption 0 started" in mcli.ok("logs", name, "--prev")
    assert "resumption 0 started" in mcli.ok("logs", name, "--resumption", "0")
    assert f"✔ Stopped run {name}" in mcli.ok("stop", "runs", "long-sleeper-*", "-y")
    await wait_for(mcli.stack, name, S.STOPPED, resumption=1)
    updated = mcli.ok("update", "run", name, "--max-retries", "1", "--priority", "lowest")
    assert "max_retries=1" in updated
    assert re.search(r"Max Retries\s+1", mcli.ok("describe", "run", name))
    assert f"✔ Deleted run {name}" in mcli.ok("delete", "run", name, "-y")
    assert mcli("describe", "run", name).returncode == 0  # its history stays readable
    await listed(mcli, name, S.STOPPED, resumption=1)
    assert name not in mcli.ok("get", "runs", "-o", "name")
    audit = mcli.ok("audit", "--run", name)
    assert "run.stop_requested" in audit
    assert "run.deleted" in audit
    assert "rank 0 ended by signal 15 (Stopped)" in audit  # SIGTERM, for the stop
    assert "exit code None" not in audit


async def test_retries_show_every_resumption_golden(mcli: Mcli) -> None:
    name = mcli.submit("flaky")
    run = await wait_for(mcli.stack, name, *DONE, resumption=2)
    assert run.status is S.COMPLETED
    assert [r.status for r in run.resumptions] == [S.FAILED, S.FAILED, S.COMPLETED]
    await listed(mcli, name, S.COMPLETED, resumption=2)
    golden("describe_flaky.out", normalise(mcli.ok("describe", "run", name), [name]))
    golden("get_runs_flaky.out", normalise(mcli.ok("get", "runs", name), [name]))
    # -o json is the run objects, the SDK's Run (the same object as its own history folds to)

    async def as_folded() -> bool:
        folded = await wait_for(mcli.stack, name, S.COMPLETED, resumption=2)
        return json_rows(mcli, name) == [folded.to_dict()]

    await eventually(as_folded, what="get runs -o json to be the run's Run.to_dict()")
    [shown] = json_rows(mcli, name, "--all-users")
    assert (shown["name"], shown["run_uid"], shown["created_by"]) == (name, run.run_uid, USER)
    assert (shown["status"], shown["gpus"], shown["resumption_count"]) == ("COMPLETED", 1, 3)
    assert [(r["index"], r["status"], r["reason_code"]) for r in shown["resumptions"]] == [
        (0, "FAILED", "Error"),
        (1, "FAILED", "Error"),
        (2, "COMPLETED", None),
    ]
    ended = datetime.fromisoformat(shown["completed_at"])
    assert ended == run.completed_at
    assert ended.utcoffset() == timedelta(0)
    assert "flaky failure on resumption 1" in mcli.ok("logs", name, "--prev")


def _transitions(out: str, name: str) -> list[tuple[int, str]]:
    """``--follow``'s status lines: (resumption, status with its reason), in order."""
    found = re.findall(rf"^Run {name} \(resumption (\d+)\): (.+)$", out, flags=re.MULTILINE)
    return [(int(index), status) for index, status in found]


def _followed_name(out: str) -> str:
    match = re.search(r"✔ Run (\S+) submitted\.", out)
    assert match, out
    return match[1]


def test_follow_shows_every_resumption_as_it_happens(mcli: Mcli) -> None:
    done = mcli("run", "-f", str(EXAMPLES / "flaky.yaml"), "--follow", timeout=120)
    no_traceback(done)
    assert done.returncode == 0, done.stderr
    name = _followed_name(done.stdout)
    shown = _transitions(done.stdout, name)
    assert [index for index, _ in shown] == sorted(index for index, _ in shown)
    for index, end in [(0, "Failed (Error (exit code 1))"), (1, "Failed (Error (exit code 1))")]:
        assert (index, "Starting") in shown, done.stdout
        assert (index, end) in shown, done.stdout
    assert (2, "Pending") in shown, done.stdout
    assert shown[-1] == (2, "Completed"), done.stdout
    for line in ("flaky failure on resumption 0", "flaky failure on resumption 1", "third time"):
        assert line in done.stdout
    assert done.stdout.rstrip().endswith(f"✔ Run {name} completed.")


def test_follow_exits_1_and_says_so_when_the_run_fails(mcli: Mcli) -> None:
    done = mcli("run", "-f", str(EXAMPLES / "fail-rank1.yaml"), "--follow", timeout=120)
    no_traceback(done)
    assert done.returncode == 1, done.stdout
    name = _followed_name(done.stdout)
    assert _transitions(done.stdout, name)[-1] == (0, "Failed (Error (exit code 3))")
    assert done.stderr.splitlines()[-1] == f"✗ Run {name} ended Failed (Error (exit code 3))"


async def test_follow_exits_1_and_says_so_when_the_run_is_stopped(mcli: Mcli) -> None:
    argv = ["-m", "cli.main", "run", "-f", str(EXAMPLES / "long.yaml"), "--follow"]
    pipe = asyncio.subprocess.PIPE
    follow = await asyncio.create_subprocess_exec(
        sys.executable, *argv, env=mcli.env, cwd=ROOT, stdin=DEVNULL, stdout=pipe, stderr=pipe
    )
    try:
        assert follow.stdout is not None
        name = _followed_name((await asyncio.wait_for(follow.stdout.readline(), 60)).decode())
        await wait_for(mcli.stack, name, S.RUNNING)
        mcli.ok("stop", "run", name, "-y")
        out, err = (text.decode() for text in await asyncio.wait_for(follow.communicate(), 60))
    finally:
        if follow.returncode is None:
            follow.kill()
            await follow.wait()
    assert follow.returncode == 1, err
    assert "step 1" in out
    assert (0, "Stopped (Stopped)") in _transitions(out, name), out
    assert err.splitlines()[-1] == f"✗ Run {name} ended Stopped (Stopped)"


async def test_a_small_run_waits_behind_a_big_one(mcli: Mcli) -> None:
    big = mcli.submit("big")
    await wait_for(mcli.stack, big, S.RUNNING)
    small = mcli.submit("small-after")
    await wait_for(mcli.stack, small, S.QUEUED)
    waiting = mcli("logs", small)
    assert waiting.returncode == 0
    assert "has not been scheduled yet" in waiting.stderr

    def queued_in_util() -> bool:
        util = mcli.ok("util")
        return "Queued Runs:" in util and small in util.split("Queued Runs:")[1]

    await eventually(queued_in_util, what="util to show the queued run")
    util = mcli.ok("util", "local")
    assert re.search(r"local\s+a100_80gbx8\s+8xa100_80gb\s+0\s+16\s+16", util), util
    assert big in util.split("Active Non-Preemptible Runs:")[1]
    assert "Queued Runs" not in mcli.ok("util", "--hide-users")
    run = await wait_for(mcli.stack, small, *DONE, within=90)
    assert run.status is S.COMPLETED
    assert (await wait_for(mcli.stack, big, *DONE)).status is S.COMPLETED


async def test_a_queued_run_shows_the_nodes_and_instance_its_request_means(mcli: Mcli) -> None:
    big = mcli.submit("big")
    await wait_for(mcli.stack, big, S.RUNNING)
    wide = mcli.submit("hello", "--gpus", "16", "--name", "wide")  # 2 ranks of 8, not 1 of 16
    await wait_for(mcli.stack, wide, S.QUEUED)
    row = re.compile(rf"{wide}\s+local\s+2\s+8x a100_80gb\s+0\s+Queued")

    def listed_as_queued() -> bool:
        return bool(row.search(mcli.ok("get", "runs", wide)))

    await eventually(listed_as_queued, what=f"get runs to show {wide} on 2 nodes of 8")
    mcli.ok("stop", "run", wide, big, "-y")
    for name in (wide, big):
        await wait_for(mcli.stack, name, *DONE)


async def test_a_bad_image_fails_and_logs_point_at_describe(mcli: Mcli) -> None:
    name = mcli.submit("hello", "--image", "Not A Valid/Image", "--name", "bad-image")
    run = await wait_for(mcli.stack, name, *DONE)
    assert run.reason_code == "FailedImagePull"
    shown = mcli("logs", name)
    assert shown.returncode == 0
    assert "FailedImagePull" in shown.stderr
    assert f"mcli describe run {name}" in shown.stderr


async def test_clone_billing_audit_and_rebuild(mcli: Mcli) -> None:
    original = mcli.ok("get", "runs", "-o", "name").split()[-1]
    out = mcli.ok("run", "--clone", original, "--name", "cloned")
    clone = re.search(r"✔ Run (cloned-\S+) submitted", out)
    assert clone, out
    await wait_for(mcli.stack, clone[1], *DONE)
    report = json.loads(mcli.ok("billing", "--by", "run", "-o", "json"))
    assert report["gpu_ms"] > 0
    assert sum(line["gpu_ms"] for line in report["lines"]) == report["gpu_ms"]
    assert mcli.ok("billing", "--by", "user", "-o", "csv").startswith("user,gpu_hours")
    assert "TOTAL" in mcli.ok("billing", "--by", "day", "--since", "1d")
    assert USER in mcli.ok("audit", "--user", USER)
    assert "Rebuilt projection attempts" in mcli.ok("projections", "rebuild", "attempts")
    rebuilt = mcli.ok("projections", "rebuild", "--lanes", "2")
    assert all(f"Rebuilt projection {name} " in rebuilt for name in catalog.NAMES), rebuilt
    assert original in mcli.ok("get", "runs", "-o", "name")


BAD_YAML = "name: x\nimage: [\n"
TYPO = "name: Hello_World\nimage: i\ncommand: echo\ncompute: {cluster: local, gpus: 1}\ncomand: x\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-f", "missing.yaml"], "missing.yaml: no such file"),
        (["run", "-f", "{bad}"], "bad.yaml:3: expected the node content"),
        (["run", "-f", f"{EXAMPLES}/hello.yaml", "--cluster", "nowhere"], "known clusters: local"),
        (["run", "-f", f"{EXAMPLES}/hello.yaml", "--gpus", "16", "--nodes", "1"], "has 8"),
        (["run", "-f", f"{EXAMPLES}/hello.yaml", "--gpus", "3", "--nodes", "2"], "evenly"),
        (
            ["run", "-f", f"{EXAMPLES}/hello.yaml", "--gpus", "1000"],
            (
                "No set of nodes in cluster local can hold it (it needs 125 nodes with "
                "8 x a100_80gb, the cluster has 2): change the request's compute"
            ),
        ),
        (["run", "-f", f"{EXAMPLES}/hello.yaml", "--gpus", "3", "--nodes", "3"], "needs 3 nodes"),
        (
            ["run", "-f", f"{EXAMPLES}/hello.yaml", "--instance", "foo"],
            "Instance foo not found in cluster local; known instances: a100_80gbx8",
        ),
        (["run", "-f", "{noimage}"], "missing image"),
        (["describe", "run", "nope-abcdef"], "Run nope-abcdef not found"),
        (["logs", "nope-abcdef"], "Run nope-abcdef not found"),
        (["stop", "run", "nope-abcdef", "-y"], "Run nope-abcdef not found"),
        (["delete", "run", "nope-abcdef", "-y"], "Run nope-abcdef not found"),
        (["update", "run", "nope-abcdef", "--priority", "low"], "Run nope-abcdef not found"),
        (["events", "nope-abcdef"], "Run nope-abcdef not found"),
        (["util", "nowhere"], "Cluster nowhere not found; known clusters: local"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    mcli: Mcli, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_YAML)
    (tmp_path / "noimage.yaml").write_text("name: x\ncommand: echo\ncompute: {cluster: local}\n")
    args = [a.format(bad=tmp_path / "bad.yaml", noimage=tmp_path / "noimage.yaml") for a in args]
    before = mcli.ok("get", "runs", "--all-users", "--include-deleted", "-o", "name")
    done = mcli(*args)
    no_traceback(done)
    assert done.returncode == 1, done
    lines = done.stderr.splitlines()
    assert lines[0].startswith("✗ Error "), done.stderr
    assert message in lines[0], done.stderr
    after = mcli.ok("get", "runs", "--all-users", "--include-deleted", "-o", "name")
    assert before == after


@pytest.mark.parametrize(
    "args",
    [
        ["logs", "x", "--rank", "1", "--failed"],
        ["logs", "x", "--prev", "--resumption", "1"],
        ["run", "-f", "a.yaml", "-r", "b"],
        ["run"],
        ["run", "-f", "a.yaml", "--gpus", "-1"],
        ["update", "run", "x", "--max-retries", "-2"],
        ["update", "run", "x", "--max-duration", "0"],
        ["get", "runs", "--status", "sleeping"],
        ["stop", "runs", "-y"],
    ],
)
def test_usage_errors_exit_2(mcli: Mcli, args: list[str]) -> None:
    done = mcli(*args)
    no_traceback(done)
    assert done.returncode == 2, done


def test_a_typo_is_an_error_with_a_suggestion_and_writes_nothing(
    mcli: Mcli, tmp_path: Path
) -> None:
    before = mcli.ok("get", "runs", "--all-users", "--include-deleted", "-o", "name")
    path = tmp_path / "typo.yaml"
    path.write_text(TYPO + "schedulng: {max_retries: 2}\n")
    done = mcli("run", "-f", str(path))
    no_traceback(done)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"✗ Error 400: {path}: comand: unknown key (did you mean 'command'?)",
        f"  {path}: schedulng: unknown key (did you mean 'scheduling'?)",
    ]
    assert before == mcli.ok("get", "runs", "--all-users", "--include-deleted", "-o", "name")


def test_the_name_is_fixed_with_a_warning(mcli: Mcli, tmp_path: Path) -> None:
    path = tmp_path / "name.yaml"
    path.write_text(TYPO.replace("comand: x\n", ""))
    done = mcli("run", "-f", str(path))
    assert done.returncode == 0, done.stderr
    assert "using 'hello-world'" in done.stderr
    name = re.search(r"✔ Run (hello-world-[a-z]{6}) submitted", done.stdout)
    assert name, done.stdout
    mcli.ok("stop", "run", name[1], "-y")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stop", "run"], "name the runs (names or globs), give filters, or use --all"),
        (["update", "run", "x"], "nothing to update: give --priority"),
    ],
)
def test_a_usage_error_is_only_its_one_line(mcli: Mcli, args: list[str], message: str) -> None:
    done = mcli(*args)
    no_traceback(done)
    assert done.returncode == 2, done
    [line] = done.stderr.splitlines()
    assert line.startswith(f"✗ Error 400: {message}"), done.stderr


def test_an_unreachable_server_is_one_line(mcli: Mcli) -> None:
    env = {**mcli.env, "RUNPLANE_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = Mcli(env=env, stack=mcli.stack)("get", "runs")
    no_traceback(done)
    assert done.returncode == 1
    assert done.stderr.startswith("✗ Error 503: cannot reach runplane's log")
    assert "mcli dev up" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_dev_up_status_down(mcli: Mcli, tmp_path: Path) -> None:
    env = {k: v for k, v in mcli.env.items() if k != "RUNPLANE_REDIS_URL"}
    env["RUNPLANE_HOME"] = str(tmp_path / "home")
    dev = Mcli(env=env, stack=mcli.stack)
    missing = dev("get", "runs")
    assert missing.returncode == 1
    assert "mcli dev up" in missing.stderr
    try:
        up = dev.ok("dev", "up", "--nodes", "1", "--gpus-per-node", "2", "--gpu-type", "h100")
        assert "Local stack up: 1 nodes x 2 h100 GPUs" in up
        again = dev("dev", "up")
        assert again.returncode == 0
        assert "already running" in again.stderr
        status = dev.ok("dev", "status")
        for service in ("valkey", "scheduler", "projector", "log-collector", "node-0"):
            assert re.search(rf"{service}\s+\d+\s+Running", status), status
        assert "2xh100" in dev.ok("util", "--hide-users")
    finally:
        assert "Local stack stopped" in dev.ok("dev", "down")
    assert dev("dev", "status").returncode == 1
