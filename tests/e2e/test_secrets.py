"""Secrets through the whole stack (issue 21): a user creates them with ``mcli``, their runs get
them (an env secret, a mounted file 0600), another user's runs never do; the operator rotates the
keyring and the next run still gets them; and no value is in any service's log, any event, a
``describe``, a listing or any output. The stack's ACL refuses no service anything meanwhile."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from events.status import RunStatus
from services.core import sealing
from tests.e2e.mcli_helpers import Mcli, running_stack, user_key, wait_for

pytestmark = pytest.mark.e2e
RUTH, BOB = "ruth@example.com", "bob@example.com"
TOKEN = "e2e-token-value-zx81"
FILE = "e2e-file-value-qw27\n"
PRINT = (
    'if [ -n "${API_TOKEN:-}" ]; then echo "token:${#API_TOKEN}"; else echo token:absent; fi; '
    'if [ -n "$SECRET_PATH_DB" ]; then '
    'echo "file:$(sha256sum "$SECRET_PATH_DB" | cut -c1-64):$(stat -c %a "$SECRET_PATH_DB")"; '
    "else echo file:absent; fi"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("secrets") / "stack", nodes=1) as runner:
        yield runner


def submit(mcli: Mcli, tmp: Path, name: str) -> str:
    spec = {"name": name, "image": "python:3.11", "command": PRINT,
            "compute": {"cluster": "local", "gpus": 0}}  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return mcli.ok("run", "-f", str(path)).split("Run ", 1)[1].split(" ", 1)[0]


async def test_a_users_secrets_reach_their_runs_survive_a_rotation_and_never_show(
    stack: Mcli, tmp_path: Path
) -> None:
    ruth = Mcli(env={**stack.env, "MOSAICML_API_KEY": await user_key(stack.stack, RUTH)},
                stack=stack.stack)  # fmt: skip
    bob = Mcli(env={**stack.env, "MOSAICML_API_KEY": await user_key(stack.stack, BOB)},
               stack=stack.stack)  # fmt: skip
    db = tmp_path / "db.conf"
    db.write_text(FILE)
    shown = [
        ruth.ok("create", "secret", "env", "API_TOKEN", "--name", "tok", input=f"{TOKEN}\n"),
        ruth.ok("create", "secret", "mounted", str(db), "--name", "db"),
    ]
    listed = json.loads(ruth.ok("get", "secrets", "-o", "json"))
    assert sorted((s["name"], s["type"]) for s in listed) == [
        ("db", "mounted"), ("tok", "environment"),
    ]  # fmt: skip
    assert bob.ok("get", "secrets", "-o", "name").split() == []

    expected = [f"token:{len(TOKEN)}", f"file:{hashlib.sha256(FILE.encode()).hexdigest()}:600"]
    first = submit(ruth, tmp_path, "hers")
    theirs = submit(bob, tmp_path, "his")
    await wait_for(stack.stack, first, RunStatus.COMPLETED)
    await wait_for(stack.stack, theirs, RunStatus.COMPLETED)
    assert ruth.ok("logs", first).split() == expected
    assert bob.ok("logs", theirs).split() == ["token:absent", "file:absent"]

    # The operator rotates the keyring; the node-agents and the API re-read it.
    keyring = sealing.keyring_path(stack.stack.state_dir / "secrets")
    before = sealing.load_keyring(keyring).ids
    rotated = stack.ok("admin", "secrets", "rotate-key", "--keyring", str(keyring))
    assert "2 secret(s) sealed again" in rotated
    assert sealing.load_keyring(keyring).ids != before
    again = submit(ruth, tmp_path, "after-rotation")
    await wait_for(stack.stack, again, RunStatus.COMPLETED)
    assert ruth.ok("logs", again).split() == expected

    ruth.ok("delete", "secret", "tok", "-y")
    assert ruth.ok("get", "secrets", "-o", "name").split() == ["db"]

    for run in (first, again):
        shown += [
            stack.ok("events", run, "--all-users", "-o", "json"),
            ruth.ok("describe", "run", run),
            ruth.ok("logs", run),
        ]
    shown += [ruth.ok("get", "secrets"), rotated, stack.ok("audit")]
    shown += [p.read_text(errors="replace") for p in (stack.stack.state_dir / "logs").glob("*")]
    assert any("secret.created" in text for text in shown)
    for text in shown:
        assert TOKEN not in text
        assert FILE.strip() not in text
