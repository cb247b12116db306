"""The unmodified ``mosaicml-cli`` 0.8.3 reading logs and watching status through the API's
WebSocket, in each subprotocol (the server speaks only the one under test): ``mcli logs``,
``--tail``, a FAILED run's first failed rank (the client asks for it itself), ``--follow`` on a
running run that then completes, and the SDK's ``get_run_logs`` and ``wait_for_run_status``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.core.store import EventStore
from tests.integration.api.conftest import logs_api
from tests.integration.api.real_client import client_env, mcli_bin
from tests.integration.api.runs import LiveRun
from tests.integration.api.seed import ALICE, Seeded

LINES = [b"step 1 loss 0.5", "caf\u00e9 \U0001f415 ok".encode(), b"step 3 done"]
TEXT = "".join(line.decode() + "\n" for line in LINES)
SDK = """
import sys
from mcli import get_run_logs, wait_for_run_status
print("".join(get_run_logs(sys.argv[1])), end="")
print("".join(get_run_logs(sys.argv[1], tail=1)), end="")
print("STATUS", wait_for_run_status(sys.argv[1], "COMPLETED", timeout=60).status.value)
"""


@pytest.fixture(scope="module")
def mcli() -> Path:
    return mcli_bin()


@pytest.fixture(params=["graphql-transport-ws", "graphql-ws"])
async def url(
    request: pytest.FixtureRequest,
    redis_url: str,
    redis: aioredis.Redis,
    tmp_path: Path,
    seeded: Seeded,
) -> AsyncIterator[str]:
    settings = {"api_ws_protocols": request.param, "api_log_chunk_bytes": "7"}
    async with logs_api(redis_url, redis, tmp_path, **settings) as served:
        yield served


async def _started(
    mcli: Path, home: Path, url: str, key: str, *args: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(mcli),
        *args,
        env=client_env(home, url, key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _finished(process: asyncio.subprocess.Process) -> tuple[int, str]:
    async with asyncio.timeout(90):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def _run(mcli: Path, home: Path, url: str, key: str, *args: str) -> tuple[int, str]:
    """The exit code and the output, less the newlines at its end (``mcli logs`` adds a blank
    line at the end of a whole read, and none after a tail)."""
    code, out = await _finished(await _started(mcli, home, url, key, *args))
    return code, out.rstrip("\n")


async def _ran(store: EventStore, failed_rank: int | None = None) -> LiveRun:
    run = await LiveRun.start(store, ALICE, "train", nodes=2)
    await run.write(0, LINES)
    await run.write(1, [b"rank 1 says", b"ValueError: boom"])
    await run.stored(0, len(LINES))
    await run.stored(1, 2)
    await run.finish(failed_rank=failed_rank)
    await run.project()
    return run


async def test_logs_tail_failed_and_the_sdk(
    mcli: Path, tmp_path: Path, url: str, store: EventStore, seeded: Seeded
) -> None:
    key = seeded.keys[ALICE]
    done = await _ran(store)
    code, out = await _run(mcli, tmp_path, url, key, "logs", done.name)
    print(out)
    assert (code, out) == (0, TEXT.rstrip("\n"))
    code, out = await _run(mcli, tmp_path, url, key, "logs", done.name, "--tail", "2")
    print(out)
    assert (code, out) == (0, "caf\u00e9 \U0001f415 ok\nstep 3 done")

    failed = await _ran(store, failed_rank=1)
    code, out = await _run(mcli, tmp_path, url, key, "logs", failed.name)
    print(out)
    notice, _, shown = out.partition("\n")
    assert "Defaulting to show the first failed node rank" in notice
    assert (code, shown) == (0, "rank 1 says\nValueError: boom"), "the first failed rank"

    python = mcli.parent / "python"
    process = await asyncio.create_subprocess_exec(
        str(python),
        "-c",
        SDK,
        done.name,
        env=client_env(tmp_path, url, key),
        cwd=tmp_path,  # not the repository's root, whose mcli/ is runplane's own
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    code, out = await _finished(process)
    print(out)
    assert code == 0, out
    assert out == TEXT + "step 3 done\n" + "STATUS COMPLETED\n"


async def test_logs_follow_a_running_run_until_it_completes(
    mcli: Path, tmp_path: Path, url: str, store: EventStore, seeded: Seeded
) -> None:
    run = await LiveRun.start(store, ALICE, "train")
    await run.write(0, LINES)
    await run.stored(0, len(LINES))
    await run.project()
    follow = await _started(mcli, tmp_path, url, seeded.keys[ALICE], "logs", run.name, "--follow")
    assert follow.stdout is not None
    seen = b""
    async with asyncio.timeout(60):
        while not seen.endswith(b"step 3 done\n"):
            seen += await follow.stdout.read(1)
    await run.write(0, [b"the end"])
    await run.finish()
    code, out = await _finished(follow)
    print(seen.decode() + out)
    assert code == 0, out
    assert (seen.decode() + out).rstrip("\n") == TEXT + "the end"
