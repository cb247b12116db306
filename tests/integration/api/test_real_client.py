"""The unmodified ``mosaicml-cli`` 0.8.3 against a real ``python -m services.api`` process over
the session's Valkey and a seeded log: ``get runs`` (a user's own, ``--all-users`` as an admin),
``get clusters``, ``util``, and a wrong key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.api.conftest import api_server
from tests.integration.api.real_client import client_env, mcli_bin
from tests.integration.api.seed import ALICE, BOB, ROOT, Seeded


@pytest.fixture(scope="module")
def mcli() -> Path:
    return mcli_bin()


@pytest.fixture
async def endpoint(redis_url: str, tmp_path: Path, seeded: Seeded) -> AsyncIterator[str]:
    async with api_server(redis_url, tmp_path / "api.log") as url:
        yield url


async def run_mcli(mcli: Path, home: Path, endpoint: str, key: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(mcli),
        *args,
        env=client_env(home, endpoint, key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


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
