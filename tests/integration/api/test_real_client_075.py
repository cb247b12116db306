"""The unmodified ``mosaicml-cli`` 0.7.5, the version Composer 0.32.1 pins (``docs/mcli-0.7.5.md``),
against a real ``python -m services.api`` process with an API key: ``get runs``, ``describe
run``, and the SDK calls Composer's ``MosaicMLLogger`` makes, its own exact
``update_run_metadata(RUN_NAME, {...}, future=True, protect=True)`` included. Its documents are
0.8.3's; what differs is gql 3 and websockets 11 under them, so ``get_run_logs`` reads a log too."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.core.store import EventStore
from tests.integration.api.conftest import logs_api
from tests.integration.api.real_client import COMPOSER_PIN, RealClient, run_mcli, run_python
from tests.integration.api.runs import LiveRun
from tests.integration.api.seed import ALICE, BOB, Seeded

# What Composer's MosaicMLLogger sends at fit end (composer/loggers/mosaicml_logger.py), a NaN
# loss among it, through the call Composer makes.
SDK = """
from mcli import RunConfig, create_run, get_run, update_run_metadata
config = RunConfig(name='composer', image='mosaicml/pytorch:latest', command='echo hi',
                   compute={'cluster': 'local', 'gpus': 1, 'gpu_type': 'a100'})
run = create_run(config)
print('created', run.name, run.status.value)
print('got', get_run(run.name).name)
metadata = {
    'mosaicml/training_progress': '[epoch=10/10]',
    'mosaicml/training_sub_progress': '[batch=0/8]',
    'mosaicml/loss/train/total': float('nan'),
    'mosaicml/train_finished_time': 1796426835.79,
}
future = update_run_metadata(run.name, metadata, future=True, protect=True)
print('metadata', sorted(future.result(timeout=30).metadata.items()))
"""
LOGS = """
import sys
from mcli import get_run_logs
print("".join(get_run_logs(sys.argv[1])), end="")
"""


@pytest.fixture(scope="module")
def client() -> RealClient:
    client = RealClient(COMPOSER_PIN)
    client.bin()  # installed once for the module, or the module skipped when offline
    return client


async def test_get_runs_and_describe_run(
    client: RealClient, tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    code, out = await run_mcli(client.bin(), tmp_path, endpoint, seeded.keys[ALICE], "get", "runs")
    print(out)
    assert code == 0, out
    for name in seeded.runs[ALICE]:
        assert name in out
    for name in seeded.runs[BOB]:
        assert name not in out
    name = seeded.runs[ALICE][1]
    code, out = await run_mcli(
        client.bin(), tmp_path, endpoint, seeded.keys[ALICE], "describe", "run", name
    )
    print(out)
    assert code == 0, out
    assert "mosaicml/pytorch:latest" in out


async def test_composers_calls_create_get_and_update_a_runs_metadata(
    client: RealClient, tmp_path: Path, endpoint: str, seeded: Seeded
) -> None:
    key = seeded.keys[ALICE]
    out = await run_python(client.python(), tmp_path, endpoint, key, SDK)
    [name] = re.findall(r"created (composer-[a-z]+) PENDING", out)
    assert f"got {name}" in out
    assert "('mosaicml/loss/train/total', 'NaN')" in out
    assert "('mosaicml/training_progress', '[epoch=10/10]')" in out
    code, shown = await run_mcli(client.bin(), tmp_path, endpoint, key, "describe", "run", name)
    print(shown)
    assert code == 0, shown
    assert re.search(r"mosaicml/training_progress\s+\S*\s*\[epoch=10/10\]", shown), shown


@pytest.fixture(params=["graphql-transport-ws", "graphql-ws"])
async def logs_url(
    request: pytest.FixtureRequest,
    redis_url: str,
    redis: aioredis.Redis,
    tmp_path: Path,
    seeded: Seeded,
) -> AsyncIterator[str]:
    """The API speaking only one subprotocol, so gql 3 must take that one."""
    async with logs_api(redis_url, redis, tmp_path, api_ws_protocols=request.param) as served:
        yield served


async def test_get_run_logs_over_gql_3(
    client: RealClient, tmp_path: Path, logs_url: str, store: EventStore, seeded: Seeded
) -> None:
    run = await LiveRun.start(store, ALICE, "train")
    await run.write(0, [b"step 1", b"step 2"])
    await run.stored(0, 2)
    await run.finish()
    await run.project()
    out = await run_python(client.python(), tmp_path, logs_url, seeded.keys[ALICE], LOGS, run.name)
    assert out == "step 1\nstep 2\n"
