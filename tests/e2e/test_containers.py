"""``mcli dev up --executor container``: the whole stack with a real podman, driven through the
CLI as a user would. A run's image is pulled from a private registry (its size and time in
``describe``), the command runs in it (a file only the image has is in ``mcli logs``), a run
whose image the registry does not have fails with FailedImagePull and the registry's words, and
``dev down`` leaves no container."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.podlab import MARKER, MARKER_TEXT, Podlab
from cli.stack import LocalStack
from events.status import RunStatus
from services.node_agent.container.naming import node_filters
from tests.e2e.mcli_helpers import USER, Mcli, wait_for

pytestmark = pytest.mark.e2e
S = RunStatus


@pytest.fixture
def dev(tmp_path: Path, podlab: Podlab) -> Iterator[Mcli]:
    """``mcli`` with a local stack of its own, whose nodes use the lab's podman."""
    home = tmp_path / "home"
    env = {k: v for k, v in podlab.env.items() if k not in ("RUNPLANE_REDIS_URL",)}
    env |= {"RUNPLANE_HOME": str(home), "RUNPLANE_USER": USER, "TZ": "UTC", "COLUMNS": "200"}
    runner = Mcli(env=env, stack=LocalStack(home))
    try:
        yield runner
    finally:
        runner("dev", "down", timeout=120)


def _run_file(tmp_path: Path, name: str, image: str, command: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    body = {"name": name, "image": image, "command": command,
            "compute": {"cluster": "local", "gpus": 1}}  # fmt: skip
    path.write_text(json.dumps(body))  # YAML reads JSON
    return path


def _submit(dev: Mcli, run_file: Path) -> str:
    out = dev.ok("run", "-f", str(run_file))
    match = re.search(r"✔ Run (\S+) submitted\.", out)
    assert match, out
    return match[1]


def _containers(podlab: Podlab) -> list[str]:
    filters = [arg for value in node_filters("node-0") for arg in ("--filter", value)]
    listed = json.loads(podlab.podman("ps", "--all", *filters, "--format", "json"))
    return [str(c["Names"][0]) for c in listed]


async def test_a_run_in_a_container_of_its_image_through_the_cli(
    dev: Mcli, podlab: Podlab, busybox_image: str, tmp_path: Path
) -> None:
    dev.ok("dev", "up", "--executor", "container", "--nodes", "1", "--gpus-per-node", "2")
    stack = LocalStack.find(dev.stack.state_dir)
    assert stack is not None

    marker = _run_file(tmp_path, "marker", busybox_image, f"cat {MARKER}; sleep 1000")
    name = _submit(dev, marker)
    await wait_for(stack, name, S.RUNNING)
    assert _containers(podlab)  # the rank's container runs
    pulled = f"Image {busybox_image} pulled on rank 0 (node-0): "
    assert pulled in dev.ok("describe", "run", name)
    assert MARKER_TEXT in dev.ok("logs", name)

    missing = _run_file(tmp_path, "missing", f"{podlab.registry}/nowhere:1", "echo never")
    failed = _submit(dev, missing)
    run = await wait_for(stack, failed, S.FAILED)
    assert run.latest_resumption.reason_code == "FailedImagePull"
    described = dev.ok("describe", "run", failed)
    assert "manifest unknown" in described

    done = dev("dev", "down", timeout=120)
    assert done.returncode == 0, done.stderr
    assert _containers(podlab) == []  # the running rank's container went with the stack
