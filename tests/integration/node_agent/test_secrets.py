"""A user's secrets reach their runs' ranks, and no one else's: created with the unmodified
``mosaicml-cli`` 0.8.3 through a real API process, delivered by a real node-agent (logged in as
its ACL user, which may only read them) over the session's Valkey.

A run of the owner prints that its env secret is there and the hash of its mounted file (0600,
its path in ``SECRET_PATH_<NAME>``), answers git's askpass with the token, and finds its git key;
another user's run gets none of it. No value is in any event (``mcli events RUN -o json``), any
service's log, ``describe`` or output; a rank whose secret was tampered with fails with
``SecretsUnavailable`` naming it; the files are gone once the rank is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from events.codec import encode
from events.keys import run_name as run_names
from events.model import RankExited
from events.secrets import Secret
from events.status import RunStatus
from services.api.vault import Vault
from services.core import sealing
from services.core.acl import NODE_AGENT
from services.core.client import connect
from services.core.sealing import KeyringFile
from services.core.secretstore import SecretValues
from services.core.settings import Settings
from services.core.store import EventStore
from services.node_agent.process.rankdir import RankDir
from tests.acl_users import login_as, refused, server_ms
from tests.integration.api.conftest import api_server
from tests.integration.api.real_client import mcli_bin, run_mcli
from tests.integration.api.seed import add_user_with_key
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import MiniScheduler, lines, spec
from tests.ranks import open_to_ranks, trusting_git
from tests.waiting import eventually

ALICE, BOB = "alice@example.com", "bob@example.com"
TOKEN = "api-token-value-k2j9"
FILE = "db-password: file-value-m4n1\n"
GIT_TOKEN = "ghp_git-token-value-p6q3"
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nssh-key-value-w8e7\n"
VALUES = (TOKEN, "file-value-m4n1", GIT_TOKEN, "ssh-key-value-w8e7")

PRINT = r"""
test -n "$API_TOKEN" && echo "token:present:${#API_TOKEN}"
echo "file:$(sha256sum "$SECRET_PATH_DB" | cut -c1-64):$(stat -c %a "$SECRET_PATH_DB")"
user=$("$GIT_ASKPASS" 'Username for x')
password=$("$GIT_ASKPASS" 'Password for x' | sha256sum | cut -c1-64)
echo "askpass:$user:$password"
key="$SECRET_PATH_GITKEY"
case "$GIT_SSH_COMMAND" in *"$key"*) echo "git:key:$(stat -c %a "$key")";; esac
"""
PEEK = r"""
echo "token:${API_TOKEN:-absent}"
echo "path:${SECRET_PATH_DB:-absent}"
echo "askpass:${GIT_ASKPASS:-absent}"
"""


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def runplane_mcli(url: str, key: str, home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOSAICML_", "MCLI_"))}
    env |= {"MOSAICML_API_ENDPOINT": url, "MOSAICML_API_KEY": key, "HOME": str(home)}
    env["RUNPLANE_HOME"] = str(home / "runplane")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()
    return out.decode()


async def test_secrets_reach_their_owners_ranks_only_and_no_value_leaks(
    make_agent: AgentFactory,
    scheduler: MiniScheduler,
    store: EventStore,
    redis_url: str,
    tmp_path: Path,
) -> None:
    mcli = mcli_bin()
    redis = store.redis
    keys = {ALICE: await add_user_with_key(store, ALICE, "user")}
    keys[BOB] = await add_user_with_key(store, BOB, "user")
    keyring = sealing.provision(tmp_path / "secrets")
    files = tmp_path / "files"
    files.mkdir()
    (files / "db.txt").write_text(FILE)
    (files / "id_git").write_text(SSH_KEY)
    api_log = tmp_path / "api.log"
    async with api_server(redis_url, api_log, secrets_keyring_file=str(keyring)) as url:

        async def create(*args: str) -> None:
            code, out = await run_mcli(mcli, tmp_path, url, keys[ALICE], "create", "secret", *args)
            assert code == 0, out

        await create("env", f"API_TOKEN={TOKEN}", "--name", "api-token")
        await create("env", f"GITHUB_TOKEN={GIT_TOKEN}", "--name", "gh")
        await create("mounted", str(files / "db.txt"), "--name", "db")
        await create("git-ssh", str(files / "id_git"), "--name", "gitkey")

        login = login_as(redis_url, NODE_AGENT, tmp_path / "agent-secrets")
        since = server_ms(redis_url)
        agent = make_agent(
            redis_username=login["RUNPLANE_REDIS_USERNAME"],
            redis_password_file=login["RUNPLANE_REDIS_PASSWORD_FILE"],
            secrets_keyring_file=str(keyring),
        )
        await agent.start()
        mine = await scheduler.submit(spec(PRINT, gpus=0), [("node-a", [])], owner=ALICE)
        theirs = await scheduler.submit(spec(PEEK, gpus=0), [("node-a", [])], owner=BOB)
        await scheduler.wait_status(mine, RunStatus.COMPLETED)
        await scheduler.wait_status(theirs, RunStatus.COMPLETED)

        printed = await eventually(lambda: _lines(redis, mine, 4), what="alice's run's lines")
        assert printed == [
            f"token:present:{len(TOKEN)}",
            f"file:{sha(FILE)}:600",
            f"askpass:x-access-token:{sha(GIT_TOKEN + chr(10))}",
            "git:key:600",
        ]
        peeked = await eventually(lambda: _lines(redis, theirs, 3), what="bob's run's lines")
        assert peeked == ["token:absent", "path:absent", "askpass:absent"]

        # Gone with the rank: no secret file is left on the node.
        secrets = [RankDir(d).secrets_dir for d in (tmp_path / "node-a" / "ranks").glob("*/*/*")]
        assert secrets
        await eventually(
            lambda: not any(path.exists() for path in secrets),
            what="the ranks' secret files removed",
        )

        # No value in any event, as runplane's CLI shows them, nor in describe.
        for run_id in (mine, theirs):
            state = await scheduler.state(run_id)
            await redis.set(run_names(state.name), run_id)  # as the API's submission records it
            shown = await runplane_mcli(url, keys[ALICE if run_id == mine else BOB], tmp_path,
                                        "events", state.name, "-o", "json")  # fmt: skip
            assert json.loads(shown)
            code, described = await run_mcli(
                mcli, tmp_path, url, keys[ALICE if run_id == mine else BOB],
                "describe", "run", state.name,
            )  # fmt: skip
            assert code == 0, described
            for value in VALUES:
                assert value not in shown
                assert value not in described
        history = b"".join(
            b"".join(encode(record.event).values())
            for record in await store.history(f"user:{ALICE}")
        )
        assert history.count(b"secret.created@") == 4  # the entries kinds: 4 events
        for value in VALUES:
            assert value.encode() not in history
        await agent.stop()
        assert refused(redis_url, NODE_AGENT, since) == []
    assert "api-token" in agent.log_path.read_text()  # it names the secrets it gave, no more
    for log in (api_log, agent.log_path):
        text = log.read_text()
        for value in VALUES:
            assert value not in text, f"a secret's value in {log.name}"


async def test_a_tampered_secret_fails_the_rank_and_says_which(
    make_agent: AgentFactory,
    scheduler: MiniScheduler,
    store: EventStore,
    redis_url: str,
    tmp_path: Path,
) -> None:
    await add_user_with_key(store, ALICE, "user")
    keyring = sealing.provision(tmp_path / "secrets")
    # The API's own code makes the secret (its event, its sealed value), then it is spoiled.
    secret = Secret(name="db", secret_type="env", metadata={"key": "DB"}, value={"value": TOKEN})
    await Vault(store, KeyringFile(keyring)).create(ALICE, ALICE, secret)
    values = SecretValues(store.redis)
    data = await values.get(ALICE, "db")
    assert data is not None
    info = sealing.peek(data)
    flipped = ("B" if info.ciphertext[0] == "A" else "A") + info.ciphertext[1:]
    await values.put(ALICE, "db", msgspec.structs.replace(info, ciphertext=flipped).encode())

    agent = make_agent(secrets_keyring_file=str(keyring))
    await agent.start()
    run_id = await scheduler.submit(spec("echo should-not-run", gpus=0), [("node-a", [])])
    state = await scheduler.wait_status(run_id, RunStatus.FAILED)
    reason = state.latest.reason
    assert reason is not None
    assert (reason.category, reason.code) == ("system", "SecretsUnavailable")
    assert "secret db of alice@example.com does not decrypt" in reason.message
    exited = [e for e in await scheduler.events(run_id) if isinstance(e, RankExited)]
    assert [e.exit_code for e in exited] == [None]
    assert TOKEN not in agent.log_path.read_text()


async def _lines(redis: aioredis.Redis, run_id: str, n: int) -> list[str] | None:
    found = [line.decode() for line in await lines(redis, run_id)]
    return found if len(found) >= n else None


#: ``ssh`` as git runs it (``GIT_SSH_COMMAND``): it checks the key it is given (-i) is a file of
#: mode 0600 holding the git secret, then runs the remote command here: a real clone over it.
FAKE_SSH = """#!/bin/sh
key=""
while [ $# -gt 0 ]; do
  case "$1" in
    -i) key="$2"; shift 2 ;;
    -o|-p) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host="$1"; shift
[ -n "$key" ] && [ "$(stat -c %a "$key")" = 600 ] || { echo "no 0600 key: $key" >&2; exit 9; }
grep -q ssh-key-value "$key" || { echo "not the git secret" >&2; exit 9; }
echo "$host" > "$FAKE_SSH_LOG"
exec sh -c "$*"
"""


@pytest.fixture
def ssh_origin(tmp_path: Path) -> tuple[Path, Path]:
    """A bare repository with one commit, and a directory holding the fake ``ssh``."""
    bare = tmp_path / "origin" / "project.git"
    work = tmp_path / "work"
    for directory in (bare, work):
        directory.mkdir(parents=True)
    git = ["git", "-c", "user.name=T", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "--bare", "-q"], cwd=bare, check=True)
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=work, check=True)
    (work / "README").write_text("cloned over ssh\n")
    subprocess.run([*git, "add", "README"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], cwd=work, check=True)
    subprocess.run([*git, "push", "-q", str(bare), "main"], cwd=work, check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    # The ranks, and so git and this ssh, run as a uid of their own when the tests run as root:
    # the repository and the tool are theirs to read, git trusts the test's repository.
    open_to_ranks(bare.parent)
    open_to_ranks(bin_dir)
    return bare, bin_dir


async def test_git_repo_clones_over_ssh_with_the_owners_git_key(
    make_agent: AgentFactory,
    scheduler: MiniScheduler,
    store: EventStore,
    tmp_path: Path,
    ssh_origin: tuple[Path, Path],
) -> None:
    bare, bin_dir = ssh_origin
    await add_user_with_key(store, ALICE, "user")
    keyring = sealing.provision(tmp_path / "secrets")
    key = Secret(
        name="gitkey", secret_type="git", metadata={"mountPath": "/keys/git"},
        value={"value": SSH_KEY},
    )  # fmt: skip
    await Vault(store, KeyringFile(keyring)).create(ALICE, ALICE, key)

    agent = make_agent(secrets_keyring_file=str(keyring))
    agent.env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    agent.env["FAKE_SSH_LOG"] = str(open_to_ranks(tmp_path / "log", writable=True) / "ssh.log")
    agent.env.update(trusting_git(tmp_path / "git"))
    await agent.start()
    repo = {
        "integration_type": "git_repo",
        "git_repo": f"ssh://git.example{bare}",
        "git_branch": "main",
    }
    run_id = await scheduler.submit(
        spec("cat project/README", gpus=0, integrations=[repo]), [("node-a", [])]
    )
    state = await scheduler.wait_status(run_id, RunStatus.COMPLETED)
    assert state.latest.reason is None
    assert (tmp_path / "log" / "ssh.log").read_text().strip() == "git.example"
    output = await eventually(lambda: _lines(store.redis, run_id, 2), what="the clone's README")
    assert output[-1] == "cloned over ssh"  # after git's own "Cloning into ..."
    assert "ssh-key-value" not in agent.log_path.read_text()
