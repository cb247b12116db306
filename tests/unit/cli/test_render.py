"""The tables have mcli's shapes: the example outputs of ``reference/example-output`` (the
real client's tables for made-up data, copied under ``golden/``) rendered from the same data."""

from __future__ import annotations

import io
import json
import re
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console, RenderableType

from cli.models import Node, Resumption, Run, RunEvent
from cli.render import age, describe, run_rows, runs_table, utilization
from cli.sdk.clusters import (
    Cluster,
    ClusterUtilization,
    Instance,
    InstanceUtilization,
    RunUtilization,
)
from events.config import RunConfig
from events.status import RunStatus

S = RunStatus
GOLDEN = Path(__file__).parent / "golden"


def local(hour: int, minute: int) -> datetime:
    return datetime(2026, 11, 24, hour, minute).astimezone()


def render(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=200, highlight=False, markup=False, emoji=False).print(renderable)
    return out.getvalue()


def resumption(index: int, status: RunStatus, **fields: object) -> Resumption:
    base: dict[str, object] = {
        "index": index,
        "cluster": "c1",
        "gpus": 16,
        "cpus": 0,
        "gpu_type": "a100_80gb",
        "node_count": 2,
        "status": status,
        "started_at": None,
        "ended_at": None,
        "reason": None,
    }
    return Resumption(**{**base, **fields})  # type: ignore[arg-type]


def hello_world() -> Run:
    return Run(
        run_uid="a1b2c3d4-0000-1111-2222-333344445555",
        name="hello-world-Ab12Cd",
        status=S.RUNNING,
        created_at=local(12, 59),
        updated_at=local(14, 4),
        created_by="alice@example.com",
        priority="auto",
        preemptible=False,
        retry_on_system_failure=False,
        max_retries=2,
        max_duration=None,
        cluster="c1",
        gpus=16,
        gpu_type="a100_80gb",
        cpus=0,
        node_count=2,
        image="mosaicml/pytorch:latest",
        submitted_config=RunConfig(
            name="hello-world",
            image="mosaicml/pytorch:latest",
            command="echo hi",
            compute={"cluster": "c1", "gpus": 16, "gpu_type": "a100_80gb"},
            scheduling={"priority": "auto", "max_retries": 2},
            integrations=[
                {
                    "integration_type": "git_repo",
                    "git_repo": "mosaicml/composer",
                    "git_branch": "main",
                }
            ],
            env_variables={"FOO": "bar"},
        ),
        metadata={"team": "nlp"},
        resumptions=[
            resumption(
                0,
                S.FAILED,
                started_at=local(13, 2),
                ended_at=local(13, 59),
                reason="Error (exit code 1)",
                reason_code="Error",
            ),
            resumption(1, S.RUNNING, started_at=local(14, 4)),
        ],
        nodes=[
            Node(rank=0, name="node-a", status=S.RUNNING),
            Node(rank=1, name="node-b", status=S.FAILED, reason="Error"),
        ],
        events=[
            RunEvent(local(12, 59), 0, "Run created", "alice@example.com"),
            RunEvent(local(13, 2), 0, "Run started", "scheduler@h"),
            RunEvent(local(13, 59), 0, "Run failed with exit code 1", "scheduler@h"),
            RunEvent(local(14, 0), 1, "Run placed back in the scheduling queue", "scheduler@h"),
            RunEvent(local(14, 4), 1, "Run resumed", "scheduler@h"),
        ],
    )


def small_run() -> Run:
    run = hello_world()
    run.name, run.status = "small-run-Zz99 🐕", S.QUEUED
    run.resumptions = [resumption(0, S.QUEUED, gpus=8, node_count=1, gpu_type="h100_80gb")]
    return run


def test_get_runs_has_mcli_shape() -> None:
    table = runs_table([small_run(), hello_world()])
    assert render(table) == (GOLDEN / "get_runs.out").read_text()


def test_get_runs_json_is_the_sdk_s_run_objects() -> None:
    """``get runs -o json`` prints ``Run.to_dict()``: the SDK's fields by their names
    (snake_case), times ISO 8601, statuses by name, numbers as numbers."""
    run = hello_world()
    data = json.loads(json.dumps(run.to_dict()))
    shown = [f.name for f in fields(Run) if f.repr]
    assert list(data) == [*shown, "started_at", "completed_at", "resumption_count"]
    objects = [data, *data["resumptions"], *data["lifecycle"], *data["nodes"], *data["events"]]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", key) for item in objects for key in item)
    assert (data["run_uid"], data["name"], data["created_by"]) == (
        run.run_uid,
        run.name,
        "alice@example.com",
    )
    assert (data["status"], data["gpus"], data["node_count"], data["max_retries"]) == (
        "RUNNING",
        16,
        2,
        2,
    )
    assert (data["preemptible"], data["max_duration"], data["is_deleted"]) == (False, None, False)
    assert datetime.fromisoformat(data["created_at"]) == run.created_at
    assert datetime.fromisoformat(data["updated_at"]) == run.updated_at
    first = data["resumptions"][0]
    assert {k: v for k, v in first.items() if not k.endswith("_at")} == {
        "index": 0,
        "cluster": "c1",
        "gpus": 16,
        "cpus": 0,
        "gpu_type": "a100_80gb",
        "node_count": 2,
        "status": "FAILED",
        "reason": "Error (exit code 1)",
        "opened_how": "submitted",
        "reason_code": "Error",
    }
    assert datetime.fromisoformat(first["started_at"]) == local(13, 2)
    assert datetime.fromisoformat(first["ended_at"]) == local(13, 59)
    assert first["opened_at"] is None
    assert data["nodes"][1] == {
        "rank": 1,
        "name": "node-b",
        "status": "FAILED",
        "reason": "Error",
        "gpus": [],
        "exit_code": None,
        "gpu_uuids": [],
        "gpu_utilization": None,
        "gpu_memory_peak_mib": None,
    }
    assert data["events"][0]["text"] == "Run created"
    assert datetime.fromisoformat(data["events"][0]["time"]) == local(12, 59)
    assert data["submitted_config"]["compute"] == {
        "cluster": "c1",
        "gpus": 16,
        "gpu_type": "a100_80gb",
    }
    assert data["metadata"] == {"team": "nlp"}
    assert (data["started_at"], data["completed_at"], data["resumption_count"]) == (
        first["started_at"],
        None,
        2,
    )


def test_get_runs_shows_three_resumptions_unless_expanded() -> None:
    run = hello_world()
    run.resumptions = [resumption(i, S.FAILED, reason_code="Error") for i in range(5)]
    assert [r["Resumption"] for r in run_rows([run])] == ["4", "3", "2"]
    assert len(run_rows([run], expanded=True)) == 5


def test_get_runs_shows_a_column_per_metadata_key_headed_by_its_last_part() -> None:
    run = hello_world()
    run.metadata = {
        "team": "nlp",
        "mosaicml/training_progress": "[epoch=3/10]",
        "loss": 0.25,
        "done": False,
        "shape": {"a": [1, 2]},
    }
    other = hello_world()
    other.name, other.metadata = "other-run", {}
    keys = ["mosaicml/training_progress", "loss", "done", "shape", "missing", "loss"]
    header, *rows = render(runs_table([run, other], metadata=keys)).splitlines()
    shown = ["TRAINING_PROGRESS", "LOSS", "DONE", "SHAPE", "MISSING"]
    assert header.split()[-5:] == shown  # a key given twice is one column
    starts = [header.index(label) for label in shown]
    ends = [*starts[1:], None]

    def cells(row: str) -> list[str]:
        return [row[a:b].strip() for a, b in zip(starts, ends, strict=True)]

    assert cells(rows[0]) == ["[epoch=3/10]", "0.25", "false", '{"a": [1, 2]}', "-"]
    assert cells(rows[1]) == [""] * 5  # the run's values on its first row only
    assert cells(rows[2]) == ["-"] * 5  # a run without the keys


def test_describe_run_has_mcli_shape() -> None:
    expected = (GOLDEN / "describe_run.out").read_text()
    shown = render(describe(hello_world()))
    # runplane's Last Resumption ID is the resumption's index, not an execution id.
    shown = shown.replace("Last Resumption ID     1       ", "Last Resumption ID     exec-xyz")
    assert shown.replace(" ", "") == expected.replace(" ", "")
    assert shown.splitlines()[1] == expected.splitlines()[1]


NOW = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)


def cluster(name: str) -> Cluster:
    return Cluster(
        name=name,
        utilization=ClusterUtilization(
            cluster_instance_utils=[
                InstanceUtilization(name, Instance("h100x8", "h100_80gb", 8, 1), 8, 0, 8),
                InstanceUtilization(
                    name, Instance("oci.bm.gpu.a100", "a100_80gb", 8, 4), 16, 16, 32
                ),
            ],
            active_runs_by_user=[
                RunUtilization(
                    "hello-world-Ab12Cd",
                    "alice@example.com",
                    16,
                    NOW - timedelta(hours=5, minutes=3),
                    "auto",
                    False,
                    NOW,
                )
            ],
            queued_runs_by_user=[
                RunUtilization(
                    "small-run-Zz99 🐕",
                    "bob@example.com",
                    8,
                    NOW - timedelta(minutes=10),
                    "low",
                    False,
                    NOW,
                    "Insufficient resources",
                    1,
                )
            ],
        ),
    )


def test_util_has_mcli_shape() -> None:
    assert (
        render(utilization([cluster("c1")], NOW, hide_users=False))
        == (GOLDEN / "util.out").read_text()
    )
    assert (
        render(utilization([cluster("c1")], NOW, hide_users=True))
        == (GOLDEN / "util_hide_users.out").read_text()
    )


def test_util_of_several_clusters_has_mcli_shape() -> None:
    shown = render(utilization([cluster("c1"), cluster("c2")], NOW, hide_users=False))
    assert shown == (GOLDEN / "util_multi.out").read_text()


def test_ages_read_like_mcli() -> None:
    assert [age(NOW - timedelta(seconds=s), NOW) for s in (5, 600, 18000, 200000)] == [
        "5s",
        "10min",
        "5hr",
        "2d",
    ]


def test_util_shows_cordoned_gpus_apart_only_while_there_are_any() -> None:
    plain = cluster("c1")
    fenced = InstanceUtilization("c1", Instance("h100x8", "h100_80gb", 8, 1), 0, 0, 8, 8)
    utils = plain.utilization
    cordoned = Cluster(
        name="c1",
        utilization=ClusterUtilization(
            cluster_instance_utils=[fenced, utils.cluster_instance_utils[1]],
            active_runs_by_user=utils.active_runs_by_user,
            queued_runs_by_user=utils.queued_runs_by_user,
        ),
    )
    shown = render(utilization([cordoned], NOW, hide_users=True))
    header, first, second = shown.splitlines()[1:4]
    assert header.split() == [
        "NAME",
        "INSTANCE_NAME",
        "NODE_INFO",
        "GPUS_AVAILABLE",
        "GPUS_CORDONED",
        "GPUS_USED",
        "GPUS_TOTAL",
    ]
    assert first.split()[-4:] == ["0", "8", "0", "8"]
    assert second.split()[-4:] == ["16", "0", "16", "32"]
    assert "GPUS_CORDONED" not in render(utilization([plain], NOW, hide_users=True))


def test_describe_run_names_the_physical_gpus_where_the_placement_did() -> None:
    run = hello_world()
    uuids = ("GPU-8f2c0000-0000-0000-0000-000000000000", "GPU-1b7e0000-0000-0000-0000-000000000000")
    nodes = [
        Node(rank=0, name="node-a", status=S.RUNNING, gpus=(2, 3), gpu_uuids=uuids),
        Node(rank=1, name="node-b", status=S.FAILED, reason="Error", gpus=(0,)),
    ]
    shown = render(describe(replace(run, nodes=nodes)))
    header = next(line for line in shown.splitlines() if line.startswith("RANK"))
    assert header.split() == ["RANK", "NODE", "NAME", "STATUS", "REASON", "GPUS"]
    assert f"2 {uuids[0]}, 3 {uuids[1]}" in shown
    assert re.search(r"node-b\s+Failed\s+Error\s+0\s*$", shown, re.MULTILINE)
