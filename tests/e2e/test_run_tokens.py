"""A run talks back (issue 19): each rank gets a run token in a file only it reads, and with it
the run's own code reads its run, changes its metadata and submits child runs, as its owner and
nothing more; the token stops working when the attempt ends, and is never shown anywhere.

One real stack, one run whose command (``tests/e2e/inrun/token_calls.py``, stdlib only) makes
the calls from inside the rank and prints what it was answered."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from events.status import RunStatus
from services.node_agent.settings import default_homes
from tests.e2e.mcli_helpers import ROOT, Mcli, running_stack, submit, user_key, wait_for
from tests.integration.api.real_client import COMPOSER_PIN, RealClient
from tests.ranks import open_to_ranks
from tests.waiting import eventually

S = RunStatus
pytestmark = pytest.mark.e2e
RUTH, BOB = "ruth@example.com", "bob@example.com"
CALLS = ROOT / "tests" / "e2e" / "inrun" / "token_calls.py"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("tokens") / "stack") as runner:
        yield runner


def graphql(mcli: Mcli, credential: str, query: str) -> httpx.Response:
    return httpx.post(
        mcli.stack.api_url,
        json={"query": query, "variables": {}},
        headers={"Authorization": f"Bearer {credential}"},
        timeout=30,
    )


def token_file(mcli: Mcli, run: str) -> Path:
    nodes = (mcli.stack.state_dir / "nodes").iterdir()  # as root, the nodes share their homes
    [found] = {p for n in nodes if (p := default_homes(n) / run / "0" / "0" / "token").exists()}
    return found


async def test_a_runs_token_does_its_few_things_as_its_owner_then_stops_working(
    stack: Mcli, tmp_path: Path
) -> None:
    ruth = Mcli(env={**stack.env, "MOSAICML_API_KEY": await user_key(stack.stack, RUTH)},
                stack=stack.stack)  # fmt: skip
    bob = Mcli(env={**stack.env, "MOSAICML_API_KEY": await user_key(stack.stack, BOB)},
               stack=stack.stack)  # fmt: skip
    others = submit(bob, tmp_path, "bobs", "sleep 600")
    release = open_to_ranks(tmp_path / "gate") / "release"
    name = submit(
        ruth,
        tmp_path,
        "talks-back",
        f"{sys.executable} {CALLS}",
        OTHER=others,
        RELEASE=str(release),
    )
    run = await wait_for(stack.stack, name, S.RUNNING)

    def said() -> dict[str, Any] | None:
        out = ruth.ok("logs", name)
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        return None if line is None else json.loads(line.removeprefix("RESULT "))

    result = await eventually(said, what=f"{name} to print what it was answered", within=60)

    # Who it is: its owner, through this run's attempt, never an admin.
    assert result["whoami"]["data"]["whoami"] == {
        "name": RUTH, "role": "user", "run": name, "attempt": 0,
    }  # fmt: skip
    assert [r["name"] for r in result["own"]["data"]["getRunsPaginated"]["runs"]] == [name]
    # Its metadata: changed; another's run: not there; another request on its own: refused.
    assert result["metadata"]["status"] == 200, result["metadata"]
    assert result["other"]["data"]["getRunsPaginated"]["runs"] == []
    assert (result["metadata_other"]["status"], result["metadata_other"]["error"]) == (
        404, f"Run {others} not found",
    )  # fmt: skip
    assert result["stop_own"]["status"] == 403
    assert "use an API key" in result["stop_own"]["error"]
    assert result["users"]["status"] == 403
    assert result["child_of_other"]["status"] == 404
    # Its child: its owner's, with the run as its parent.
    assert result["child"]["status"] == 200, result["child"]
    [child] = [r["name"] for r in result["child"]["data"]["createRun"]]
    described = ruth.ok("describe", "run", name)
    assert "mosaicml/training_progress" in described
    assert "[epoch=1/2]" in described
    assert child in described, "describe lists the run's children"
    assert f"Parent Run {name}" in " ".join(ruth.ok("describe", "run", child).split())
    audit = json.loads(stack.ok("audit", "-r", name, "-o", "json", "--all-users"))
    updated = next(e for e in audit if e["action"] == "run.metadata_updated")
    assert (updated["actor"], updated["via"]) == (RUTH, f"run {name} attempt 0")
    assert any(e["action"] == "request.refused" and e["via"] for e in audit), audit

    # The token, read where the rank reads it: 0600; it works while the attempt lives...
    path = token_file(stack, run.run_uid)
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    assert graphql(stack, token, "{ whoami { name run } }").json()["data"]["whoami"] == {
        "name": RUTH, "run": name,
    }  # fmt: skip
    # ... and not from the attempt's end on; its file is gone with the rank.
    release.touch()
    await wait_for(stack.stack, name, S.COMPLETED)
    ended = graphql(stack, token, "{ whoami { name } }")
    assert ended.status_code == 401, ended.text
    await eventually(lambda: not path.exists(), what="the token file to be removed")

    # Never shown: not in any service's log, the run's events, its description or its logs.
    secret_hash = hashlib.sha256(token.rsplit(".", 1)[1].encode()).hexdigest()
    shown = [
        stack.ok("events", name, "--all-users", "-o", "json"),
        stack.ok("events", name, "--all-users"),
        ruth.ok("describe", "run", name),
        ruth.ok("logs", name),
        *(path.read_text(errors="replace") for path in (stack.stack.state_dir / "logs").glob("*")),
    ]
    for text in shown:
        assert token not in text
        assert token.rsplit(".", 1)[1] not in text
        assert secret_hash not in text
    assert "attempt.token_issued" in shown[0], "the token's issue is on the log, without its hash"


SDK_INSIDE = """
import os
from mcli import RunConfig, create_run, get_run, update_run_metadata
name = os.environ["RUN_NAME"]
update_run_metadata(name, {"loss": float("nan"), "step": 7}, future=True, protect=True).result()
child = create_run(RunConfig(name="grandchild", image="python:3.11", command="true",
                             compute={"cluster": "local", "gpus": 0}))
print("CHILD", child.name, get_run(name).metadata["step"], flush=True)
"""


async def test_runplanes_own_sdk_inside_a_run_uses_the_token_and_makes_children(
    stack: Mcli, tmp_path: Path
) -> None:
    script = open_to_ranks(tmp_path / "scripts") / "inside.py"
    script.write_text(SDK_INSIDE)
    name = submit(stack, tmp_path, "sdk-inside", f"{sys.executable} {script}")
    run = await wait_for(stack.stack, name, S.COMPLETED, S.FAILED, S.STOPPED)
    out = stack.ok("logs", name)
    assert run.status is S.COMPLETED, out
    [line] = [ln for ln in out.splitlines() if ln.startswith("CHILD ")]
    _, child, step = line.split()
    assert step == "7"
    described = " ".join(stack.ok("describe", "run", child).split())
    assert f"Parent Run {name}" in described
    parent = stack.ok("describe", "run", name)
    assert child in parent
    assert "NaN" in parent


#: Inside a run, with the real mosaicml-cli 0.7.5 (Composer 0.32.1's pin) and no key: Composer's
#: exact call, then a child run as mcli makes one from inside a run (parentName = RUN_NAME).
REAL_INSIDE = """
import os, sys
import mcli
name = os.environ["RUN_NAME"]
metadata = {"mosaicml/training_progress": "[epoch=3/10]", "mosaicml/loss": float("nan")}
mcli.update_run_metadata(name, metadata, future=True, protect=True).result()
child = mcli.create_run(mcli.RunConfig(name="kid", image="python:3.11", command="true",
                                       compute={"cluster": "local", "gpus": 0}))
print("CHILD", child.name, flush=True)
try:
    mcli.get_run(os.environ["OTHER"])
except mcli.MAPIException as error:
    print("OTHER", error.status, flush=True)
"""


async def test_the_real_client_075_inside_a_run_reports_with_only_the_token(
    stack: Mcli, tmp_path: Path
) -> None:
    real = RealClient(COMPOSER_PIN)
    python, binary = real.python(), real.bin()
    others = submit(stack, tmp_path, "someone-elses", "sleep 600")
    script = open_to_ranks(tmp_path / "scripts") / "real_inside.py"
    script.write_text(REAL_INSIDE)
    # No mcli config: the token file is the client's one credential.
    home = open_to_ranks(tmp_path / "home", writable=True)
    command = f'{python} {script} && {binary} describe run "$RUN_NAME"'
    name = submit(stack, tmp_path, "real-inside", command, OTHER=others, HOME=str(home),
                  MCLI_DISABLE_UPGRADE_CHECK="true", NO_PROXY="127.0.0.1,localhost")  # fmt: skip
    run = await wait_for(stack.stack, name, S.COMPLETED, S.FAILED, S.STOPPED)
    out = stack.ok("logs", name)
    assert run.status is S.COMPLETED, out
    assert "mosaicml/training_progress" in out, "the real client's describe shows the keys"
    assert "[epoch=3/10]" in out
    [child] = [line.split()[1] for line in out.splitlines() if line.startswith("CHILD ")]
    assert "OTHER 404" in out, "another user's run is not there for the token"
    assert f"Parent Run {name}" in " ".join(stack.ok("describe", "run", child).split())
    described = stack.ok("describe", "run", name)
    assert "NaN" in described
    assert child in described


COMPOSER_VENV = ROOT / ".venv-composer"
COMPOSER_PYTHON = COMPOSER_VENV / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(
    not (COMPOSER_VENV / ".installed-composer-0.32.1").exists(),
    reason="Composer 0.32.1 is not installed: examples/composer/venv.sh makes .venv-composer "
    "(5.5 GB: torch on the CPU), then this test runs",
)
async def test_composer_reports_its_progress_and_resumes_across_stop_and_restart(
    stack: Mcli, tmp_path: Path
) -> None:
    name = submit(stack, tmp_path, "composer-tiny",
                  f"{COMPOSER_PYTHON} {ROOT / 'examples' / 'composer' / 'train.py'}",
                  SAVE_ROOT=str(open_to_ranks(tmp_path / "checkpoints", writable=True)),
                  EPOCH_SECONDS="1")  # fmt: skip
    await wait_for(stack.stack, name, S.RUNNING)
    saved = tmp_path / "checkpoints" / name
    await eventually(lambda: list(saved.glob("ep4-*")), what="epoch 4's checkpoint", within=120)
    stack.ok("stop", "run", name, "-y")
    await wait_for(stack.stack, name, S.STOPPED)
    progress = json.loads(stack.ok("get", "runs", "-o", "json"))
    stack.ok("run", "-r", name)
    run = await wait_for(stack.stack, name, S.COMPLETED, S.FAILED, resumption=1, within=180)
    out = stack.ok("logs", name)
    assert run.status is S.COMPLETED, out
    assert f"{name}: starting at epoch" in out
    assert f"{name}: finished at epoch 10" in out
    started = [ln for ln in out.splitlines() if f"{name}: starting at epoch" in ln]
    assert started[-1].split()[-1] != "0", "the restart resumed from its own checkpoint"
    metadata = next(r for r in progress if r["name"] == name)["metadata"]
    # The logger added itself and reported from the first attempt on (its progress comes at the
    # end of fit, or each minute: this attempt was stopped before either).
    assert metadata["mosaicml/composer_version"] == "0.32.1"
    described = stack.ok("describe", "run", name)
    assert "mosaicml/training_progress" in described
    assert "[epoch=10/10]" in described
    assert "mosaicml/train_finished_time" in described
