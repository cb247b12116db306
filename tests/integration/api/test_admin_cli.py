"""``mcli admin users ...`` and ``mcli admin keys ...``: runplane's own CLI, as a process, against a
real ``python -m services.api``; the key on stdout alone, and only an admin may."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.integration.api.conftest import api_server
from tests.integration.api.seed import ALICE, ROOT, Seeded

ROOT_DIR = Path(__file__).resolve().parents[3]
WHO = "query { getUsers(getUsersData: {}) { name } }"


@pytest.fixture
async def endpoint(redis_url: str, tmp_path: Path, seeded: Seeded) -> AsyncIterator[str]:
    async with api_server(redis_url, tmp_path / "api.log") as url:
        yield url


def mcli(
    tmp_path: Path, endpoint: str, key: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOSAICML_", "MCLI_"))}
    env |= extra | {
        "HOME": str(tmp_path),
        "RUNPLANE_HOME": str(tmp_path / "state"),
        "MOSAICML_API_ENDPOINT": endpoint,
        "MOSAICML_API_KEY": key,
    }
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def whoami(endpoint: str, key: str) -> dict[str, object]:
    async with httpx.AsyncClient() as http:
        response = await http.post(endpoint, json={"query": WHO}, headers={"Authorization": key})
    found: dict[str, object] = response.json()
    return found


async def test_an_admin_adds_a_user_whose_key_works_until_it_is_revoked(
    tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    root = seeded.keys[ROOT]
    added = mcli(tmp_path, endpoint, root, "admin", "users", "add", "carol@example.com")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert added.stdout == key + "\n", "the key alone on stdout"
    assert key.startswith("rpk_")
    assert key not in added.stderr
    assert "Added user carol@example.com" in added.stderr
    answer = await whoami(endpoint, key)
    assert answer == {"data": {"getUsers": [{"name": "carol@example.com"}]}}

    second = mcli(tmp_path, endpoint, root, "admin", "keys", "issue", "carol@example.com")
    assert second.returncode == 0, second.stderr
    listed = mcli(tmp_path, endpoint, root, "admin", "users", "list")
    assert listed.returncode == 0, listed.stderr
    key_id = key.removeprefix("rpk_").partition("_")[0]
    assert "carol@example.com" in listed.stdout
    assert key_id in listed.stdout
    assert key not in listed.stdout, "a key is shown once"

    revoked = mcli(tmp_path, endpoint, root, "admin", "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    refused = await whoami(endpoint, key)
    assert refused["errors"] == [{"message": "Invalid API key", "extensions": {"code": 401}}]
    still = await whoami(endpoint, second.stdout.strip())
    assert still == {"data": {"getUsers": [{"name": "carol@example.com"}]}}


async def test_only_an_admin_manages_users_and_bad_input_is_one_line(
    tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    alice = seeded.keys[ALICE]
    refused = mcli(tmp_path, endpoint, alice, "admin", "users", "add", "mallory")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.strip() == (
        f"✗ Error 403: only an admin may add users; {ALICE} is not one"
    )
    root = seeded.keys[ROOT]
    cases = [
        (("admin", "users", "add", ALICE), "Error 409: user alice@example.com: the user exists"),
        (("admin", "keys", "issue", "nobody"), "Error 404"),
        (("admin", "keys", "revoke", "nosuchkey123"), "Error 404: key nosuchkey123: no such key"),
        (("admin", "users", "add", "-bad name"), "Error 400"),
    ]
    for args, words in cases:
        done = mcli(tmp_path, endpoint, root, *args)
        assert done.returncode != 0, args
        assert words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    expiring = mcli(tmp_path, endpoint, root, "admin", "users", "add", "dave", "--expires", "bad")
    assert expiring.returncode == 2
    assert "--expires" in expiring.stderr
    wrong = mcli(tmp_path, endpoint, "rpk_nope", "admin", "users", "list")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "✗ Error 401: Invalid API key"


async def test_the_operator_bootstraps_a_deployments_first_admin_once(
    tmp_path: Path, endpoint: str, redis_url: str, seeded: Seeded
) -> None:
    operator = {"RUNPLANE_REDIS_URL": redis_url}
    first = mcli(tmp_path, endpoint, "", "admin", "bootstrap", "first@example.com", env=operator)
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert first.stdout == key + "\n"
    assert key not in first.stderr
    answer = await whoami(endpoint, key)
    assert answer == {"data": {"getUsers": [{"name": "first@example.com"}]}}
    listed = mcli(tmp_path, endpoint, key, "admin", "users", "list")
    assert listed.returncode == 0, listed.stderr
    assert "first@example.com  admin" in listed.stdout
    again = mcli(tmp_path, endpoint, "", "admin", "bootstrap", "first@example.com", env=operator)
    assert again.returncode == 1
    assert "Error 409: user first@example.com: the user exists already" in again.stderr
