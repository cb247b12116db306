"""Issue 21 end to end: a private registry (Debian's ``docker-registry`` with an htpasswd file,
on loopback) and ``mcli dev up --executor container``, driven through the CLI as a user would.

A run of a private image with no secret fails with FailedImagePull and the registry's own
words; after ``mcli create secret docker``, ``mcli run -r`` pulls it and the run prints a file
only the image has. Env and mounted secrets reach the rank's container; no secret's value is
in any event, service log or output."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.podlab import MARKER, MARKER_TEXT, LabError, Podlab, busybox_tar
from cli.stack import LocalStack
from events.status import RunStatus
from tests.e2e.mcli_helpers import USER, Mcli, wait_for

pytestmark = pytest.mark.e2e
S = RunStatus
LOGIN = ("puller", "pull-pw-7Hq2")
ENV_VALUE = "env-value-Zx81"
FILE_VALUE = "file-value-Pq55"


@pytest.fixture
def private_lab(tmp_path_factory: pytest.TempPathFactory, podlab: Podlab) -> Iterator[Podlab]:
    """A lab whose registry answers only ``LOGIN`` (``podlab`` first: it skips, with the
    reason, where podman cannot run a container)."""
    try:
        lab = Podlab(tmp_path_factory.mktemp("private"), login=LOGIN)
    except LabError as exc:
        pytest.skip(f"containers: {exc}")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def dev(tmp_path: Path, private_lab: Podlab) -> Iterator[Mcli]:
    home = tmp_path / "home"
    env = {k: v for k, v in private_lab.env.items() if k != "RUNPLANE_REDIS_URL"}
    env |= {"RUNPLANE_HOME": str(home), "RUNPLANE_USER": USER, "TZ": "UTC", "COLUMNS": "200"}
    runner = Mcli(env=env, stack=LocalStack(home))
    try:
        yield runner
    finally:
        runner("dev", "down", timeout=120)


def submit(dev: Mcli, tmp_path: Path, name: str, image: str, command: str) -> str:
    path = tmp_path / f"{name}.yaml"
    spec = {"name": name, "image": image, "command": command,
            "compute": {"cluster": "local", "gpus": 1}}  # fmt: skip
    path.write_text(json.dumps(spec))
    match = re.search(r"✔ Run (\S+) submitted\.", dev.ok("run", "-f", str(path)))
    assert match
    return match[1]


async def test_a_private_image_pulls_with_the_owners_docker_secret_and_secrets_reach_the_rank(
    dev: Mcli, private_lab: Podlab, tmp_path: Path
) -> None:
    image = private_lab.push(busybox_tar(), "private:1")
    dev.ok("dev", "up", "--executor", "container", "--nodes", "1", "--gpus-per-node", "2")
    stack = LocalStack.find(dev.stack.state_dir)
    assert stack is not None

    # No secret: the registry refuses, in its own words.
    command = f'cat {MARKER}; echo "env=$TEAM_TOKEN"; cat "$SECRET_PATH_NOTES"'
    name = submit(dev, tmp_path, "private", image, command)
    run = await wait_for(stack, name, S.FAILED)
    assert run.latest_resumption.reason_code == "FailedImagePull"
    assert "authentication required" in dev.ok("describe", "run", name)

    # The owner's secrets: a registry login, a variable, a file.
    registry = image.split("/", 1)[0]
    dev.ok("create", "secret", "docker", "--server", registry, "--username", LOGIN[0],
           "--password", LOGIN[1], "--name", "lab", "--no-input")  # fmt: skip
    dev.ok("create", "secret", "env", f"TEAM_TOKEN={ENV_VALUE}", "--name", "team", "--no-input")
    notes = tmp_path / "notes.txt"
    notes.write_text(FILE_VALUE)
    dev.ok("create", "secret", "mounted", str(notes), "--name", "notes", "--no-input")
    listed = dev.ok("get", "secrets")
    assert "lab" in listed
    assert "docker" in listed
    assert LOGIN[1] not in listed

    dev.ok("run", "-r", name)
    run = await wait_for(stack, name, S.COMPLETED, S.FAILED, resumption=1)
    out = dev.ok("logs", name)
    assert run.status is S.COMPLETED, (out, dev.ok("describe", "run", name))
    assert MARKER_TEXT in out, "the image's own file: the private image was pulled"
    assert f"env={ENV_VALUE}" in out
    assert FILE_VALUE in out
    assert f"Image {image} pulled on rank 0" in dev.ok("describe", "run", name)

    # No value anywhere but in the rank: not in events, descriptions, listings or service logs.
    shown = [
        dev.ok("events", name, "-o", "json"),
        dev.ok("describe", "run", name),
        dev.ok("get", "secrets", "-o", "json"),
        dev.ok("audit", "-o", "json"),
        *(log.read_text(errors="replace") for log in (dev.stack.state_dir / "logs").glob("*")),
    ]
    for text in shown:
        for value in (LOGIN[1], ENV_VALUE, FILE_VALUE):
            assert value not in text
