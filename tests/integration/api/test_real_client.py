"""The unmodified ``mosaicml-cli`` 0.8.3 against a real ``python -m services.api`` process over
the session's Valkey and a seeded log: ``get runs`` (a user's own, ``--all-users`` as an admin),
``get clusters``, ``util``, and a wrong key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.api.real_client import mcli_bin, run_mcli, run_python
from tests.integration.api.seed import ALICE, BOB, ROOT, Seeded
from tests.waiting import eventually


@pytest.fixture(scope="module")
def mcli() -> Path:
    return mcli_bin()


async def test_get_runs_lists_the_callers_own_runs(
    mcli: Path, tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    code, out = await run_mcli(mcli, tmp_path, endpoint, seeded.keys[ALICE], "get", "runs")
    print(out)
    assert code == 0, out
    for name in seeded.runs[ALICE]:
        assert name in out
    for name in seeded.runs[BOB]:
        assert name not in out


async def test_an_admin_gets_every_users_runs_with_all_users(
    mcli: Path, tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    root = seeded.keys[ROOT]
    code, out = await run_mcli(mcli, tmp_path, endpoint, root, "get", "runs", "--all-users")
    print(out)
    assert code == 0, out
    for name in seeded.runs[ALICE] + seeded.runs[BOB]:
        assert name in out
    code, out = await run_mcli(
        mcli, tmp_path, endpoint, root, "get", "runs", "--status", "queued", "--all-users"
    )
    print(out)
    assert code == 0, out
    assert seeded.runs[ALICE][1] in out
    assert seeded.runs[ALICE][0] not in out


async def test_clusters_and_utilization(
    mcli: Path, tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    code, out = await run_mcli(mcli, tmp_path, endpoint, seeded.keys[BOB], "get", "clusters")
    print(out)
    assert code == 0, out
    assert "local" in out
    code, out = await run_mcli(mcli, tmp_path, endpoint, seeded.keys[BOB], "util")
    print(out)
    assert code == 0, out
    assert "local" in out
    assert seeded.runs[BOB][1] in out, "the queued runs"


async def test_a_wrong_key_prints_401_and_exits_1(
    mcli: Path, tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    wrong = seeded.keys[ALICE][:-4] + "AAAA"
    code, out = await run_mcli(mcli, tmp_path, endpoint, wrong, "get", "runs")
    print(out)
    assert code == 1
    assert "Error 401: Invalid API key" in out


async def test_describe_run_shows_the_run_and_its_config(
    mcli: Path, tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    name = seeded.runs[ALICE][1]
    code, out = await run_mcli(
        mcli, tmp_path, endpoint, seeded.keys[ALICE], "describe", "run", name
    )
    print(out)
    assert code == 0, out
    assert name in out
    assert "mosaicml/pytorch:latest" in out
    code, out = await run_mcli(mcli, tmp_path, endpoint, seeded.keys[BOB], "describe", "run", name)
    print(out)
    # Another user's run is not there for bob: the client says so itself (an empty listing).
    assert f"No runs found with name: {name}" in out
    assert ALICE not in out


RUN_YAML = """\
name: hello-world
image: mosaicml/pytorch:latest
command: echo hello
compute:
  cluster: local
  gpus: 1
  gpu_type: a100
scheduling:
  priority: low
  max_retries: 1
env_variables:
  FOO: bar
"""


async def test_a_run_submitted_stopped_restarted_updated_and_deleted_by_the_real_client(
    mcli: Path, tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    key = seeded.keys[ALICE]
    config = tmp_path / "run.yaml"
    config.write_text(RUN_YAML)

    async def ok(*args: str) -> str:
        code, out = await run_mcli(mcli, tmp_path, endpoint, key, *args)
        print(out)
        assert code == 0, out
        return out

    submitted = await ok("run", "-f", str(config))
    [name] = re.findall(r"Run (hello-world-[a-z]+) submitted", submitted)

    async def listed() -> bool:
        return name in await ok("get", "runs")

    await eventually(listed, what=f"{name} in the projector's listing")
    assert "echo hello" in await ok("describe", "run", name)
    assert "Stopped" in await ok("stop", "run", name, "-y")
    assert "resubmitted" in await ok("run", "-r", name)
    await ok("update", "run", name, "--priority", "lowest", "--max-retries", "3")
    assert "Lowest" in await ok("describe", "run", name)
    await ok("stop", "run", name, "-y")
    await ok("delete", "run", name, "-y")

    async def shown_deleted() -> bool:
        return f"{name} (Deleted)" in await ok("get", "runs", "--include-deleted")

    await eventually(shown_deleted, what=f"{name} shown as deleted")

    async def unlisted() -> bool:
        return name not in await ok("get", "runs")

    await eventually(unlisted, what=f"{name} gone from the listing")
    # bob cannot see, stop or restart it: not found, in the client's words
    code, out = await run_mcli(mcli, tmp_path, endpoint, seeded.keys[BOB], "run", "-r", name)
    print(out)
    assert code == 1
    assert f"Error 404: Run {name} not found" in out


SDK_SCRIPT = """
import sys
from mcli import RunConfig, create_run, get_run, stop_run, update_run_metadata
config = RunConfig(name='sdk-run', image='mosaicml/pytorch:latest', command='echo hi',
                   compute={'cluster': 'local', 'gpus': 1, 'gpu_type': 'a100'})
run = create_run(config)
print('created', run.name, run.status.value)
print('got', get_run(run.name).name)
update_run_metadata(run.name, {'loss': float('nan'), 'step': 1})
updated = update_run_metadata(run.name, {'step': 2})
print('metadata', sorted(updated.metadata.items()))
stopped = stop_run(run.name, reason='no longer needed')
print('stopped', stopped.status.value)
try:
    get_run('no-such-run')
except Exception as error:
    print('missing', error)
"""


async def test_the_real_sdk_creates_gets_and_stops_a_run(
    mcli: Path, tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    text = await run_python(
        mcli.with_name("python"), tmp_path, endpoint, seeded.keys[ALICE], SDK_SCRIPT
    )
    assert re.search(r"created sdk-run-[a-z]+ PENDING", text)
    assert "stopped STOPPED" in text
    assert "metadata [('loss', 'NaN'), ('step', 2)]" in text
    assert "missing Error 404: Run no-such-run not found" in text
