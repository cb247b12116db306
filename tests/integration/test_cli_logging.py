"""The ``mcli`` command shows a user its own messages only: what library code logs in its
process (a fold that skips an event while the CLI folds a run's history) goes to the local
stack's ``logs/mcli.log``, never to stdout or stderr."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import redis.asyncio as aioredis

from cli.stack import logs_dir
from events import codec, keys
from events.access import Action, Principal
from events.model import RankRunning
from services.api.runs import RunRequests
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from tests import factories
from tests.integration.api.conftest import api_server
from tests.integration.api.seed import add_user_with_key
from tests.raw import xadd

ROOT = Path(__file__).resolve().parents[2]
ROOT_USER = "root@example.com"
PRINCIPAL = Principal(name=ROOT_USER, role="admin")


async def test_a_fold_warning_in_mcli_stays_off_the_terminal(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    try:
        key = await add_user_with_key(store, ROOT_USER, "admin")
        run_id = await RunRequests(store).append_submit(PRINCIPAL, factories.spec())
        name = (await RunRequests(store).view(PRINCIPAL, run_id, Action.DESCRIBE))[0].name
        aggregate = f"run:{run_id}"
        stream = keys.aggregate_stream(
            aggregate, keys.partition_of(aggregate, store.settings.partitions)
        )
    finally:
        await store.close()
    # An event the rules refuse (a rank of an attempt that holds no GPUs), written under the
    # store's rules, so that the CLI's fold of this history logs projection.skipped.
    bogus = RankRunning(id=factories.new_id(), actor="agent@n1", run_id=run_id, rank=0, node="n1")
    fields: dict[str, str | bytes] = {k.decode(): v for k, v in codec.encode(bogus).items()}
    fields[codec.VERSION.decode()] = "2"
    await xadd(redis, stream, fields)
    home = tmp_path / "home"
    logs_dir(home).mkdir(parents=True)  # a local stack was started here once
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPLANE_", "MOSAICML_"))}
    env |= {"RUNPLANE_HOME": str(home), "COLUMNS": "200", "MOSAICML_API_KEY": key}

    async with api_server(redis_url, tmp_path / "api.log") as endpoint:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "cli.main", "describe", "run", name),
            env=env | {"MOSAICML_API_ENDPOINT": endpoint},
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = (text.decode() for text in await asyncio.wait_for(process.communicate(), 60))

    assert process.returncode == 0, err
    assert f"Run Name               {name}" in out
    for output in (out, err):
        assert "projection." not in output
        assert '"event":' not in output
        assert '"level"' not in output
    assert err == ""
    [line] = (logs_dir(home) / "mcli.log").read_text().splitlines()
    logged = json.loads(line)
    assert (logged["event"], logged["level"], logged["type"]) == (
        "projection.skipped",
        "warning",
        "RankRunning",
    )
