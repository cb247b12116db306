"""A run's metadata against the real API (in-process, or a ``python -m services.api`` process
with a projector beside it): updates merge, a resent flush appends nothing, the run's metadata
is held to ``api_max_metadata_bytes`` (413, nothing appended); runplane's SDK sends NaN and the
infinities as mcli's strings, returns a future or the Run, carries a protected update through
a SIGTERM; ``mcli get runs -m KEY`` shows a column per key."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

import mcli
from events import metadata as md
from events.model import MetadataUpdated
from services.core.store import EventStore
from tests.integration.api.conftest import api_server
from tests.integration.api.seed import ALICE, Seeded
from tests.integration.api.test_admin_cli import ROOT_DIR
from tests.integration.api.test_admin_cli import mcli as runplane_cli
from tests.integration.api.test_reads import code_of, post
from tests.integration.api.test_requests import METADATA, create, log_length, named
from tests.services import ServiceProcess
from tests.waiting import eventually

LIMIT = 2048


@pytest.fixture
async def served(redis_url: str, tmp_path: Path, seeded: Seeded) -> AsyncIterator[str]:
    """The API as a process (metadata limit ``LIMIT``) with a projector beside it."""
    env = os.environ | {"RUNPLANE_REDIS_URL": redis_url}
    projector = await ServiceProcess("services.projector", env, tmp_path / "projector.log").start()
    try:
        async with api_server(
            redis_url, tmp_path / "api.log", api_max_metadata_bytes=str(LIMIT)
        ) as url:
            yield url
    finally:
        assert await projector.stop() == 0, projector.output()


@pytest.fixture
async def http(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.removesuffix("/graphql"), timeout=30) as client:
        yield client


@pytest.fixture
def sdk(served: str, seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    """runplane's SDK (``import mcli``) pointed at ``served`` with alice's key."""
    for name in ("MCLI_TIMEOUT", "MCLI_CONFIG_PATH", "MOSAICML_ACCESS_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOSAICML_API_ENDPOINT", served)
    monkeypatch.setenv("MOSAICML_API_KEY", seeded.keys[ALICE])


async def update(
    api: httpx.AsyncClient, key: str, name: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    variables = {"getRunsData": named(name), "updateRunMetadataData": {"metadata": metadata}}
    return await post(api, key, {"query": METADATA, "variables": variables})


async def new_run(api: httpx.AsyncClient, seeded: Seeded) -> tuple[str, str]:
    """A run of alice's, submitted with metadata ``{"team": "nlp"}``: its name and id."""
    created = await create(api, seeded.keys[ALICE])
    [run] = created["data"]["createRun"]
    return run["name"], run["id"]


async def run_events(store: EventStore, run_id: str) -> list[Any]:
    return [record.event for record in await store.history(f"run:{run_id}")]


async def test_updates_merge_and_a_resent_flush_appends_nothing(
    api: httpx.AsyncClient, seeded: Seeded, store: EventStore
) -> None:
    key = seeded.keys[ALICE]
    name, run_id = await new_run(api, seeded)
    flush = {"mosaicml/training_progress": "[epoch=1/10]", "loss": 0.5, "step": 1}
    for _ in range(3):  # Composer's logger, flushing on its interval with nothing new
        answer = await update(api, key, name, flush)
        assert "errors" not in answer, answer
        [run] = answer["data"]["updateRunMetadata"]
        assert run["details"]["metadata"] == {"team": "nlp"} | flush
    assert len(await run_events(store, run_id)) == 2  # the submit, one update

    answer = await update(api, key, name, flush | {"step": 2, "loss": 0.5, "team": "nlp"})
    [run] = answer["data"]["updateRunMetadata"]
    assert run["details"]["metadata"] == {"team": "nlp"} | flush | {"step": 2}
    *_, last = await run_events(store, run_id)
    assert isinstance(last, MetadataUpdated)
    assert last.metadata == {"step": 2}  # only the key whose value changed
    assert len(await run_events(store, run_id)) == 3


async def test_metadata_over_the_limit_is_413_naming_the_run_and_appends_nothing(
    http: httpx.AsyncClient, seeded: Seeded, redis: aioredis.Redis
) -> None:
    key = seeded.keys[ALICE]
    name, _ = await new_run(http, seeded)
    first = {"blob": "x" * 1500}
    assert "errors" not in await update(http, key, name, first)
    before = await log_length(redis)

    more = {"more": "y" * 1000}
    refused = await update(http, key, name, more)
    assert code_of(refused) == 413
    size = md.size({"team": "nlp"} | first | more)
    message = refused["errors"][0]["message"]
    assert message == (
        f"Run {name}: its metadata would be {size} bytes as JSON, over the limit of {LIMIT} "
        "bytes; send fewer or smaller values"
    )
    too_big = await create(http, key, metadata={"blob": "z" * LIMIT})
    assert code_of(too_big) == 413
    assert "my-test-run" in too_big["errors"][0]["message"]
    assert await log_length(redis) == before
    assert "errors" not in await update(http, key, name, first)  # the same values: no change


async def test_nan_from_a_lenient_client_is_stored_as_mclis_string(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """JSON has no NaN, but the server's parser takes it: it is kept as the string mcli sends."""
    key = seeded.keys[ALICE]
    name, _ = await new_run(api, seeded)
    variables = {"getRunsData": named(name), "updateRunMetadataData": {"metadata": {"x": math.nan}}}
    body = json.dumps({"query": METADATA, "variables": variables})
    assert "NaN" in body
    response = await api.post("/graphql", content=body, headers={"Authorization": key})
    [run] = response.json()["data"]["updateRunMetadata"]
    assert run["details"]["metadata"] == {"team": "nlp", "x": "NaN"}


async def test_the_sdk_sends_nan_and_infinities_as_strings_and_leaves_out_what_json_cannot(
    http: httpx.AsyncClient, seeded: Seeded, sdk: None, caplog: pytest.LogCaptureFixture
) -> None:
    name, _ = await new_run(http, seeded)
    sent = {
        "loss": math.nan,
        "best": math.inf,
        "worst": -math.inf,
        "deep": {"xs": [math.nan, 1.5]},
        "unsendable": object(),
        "step": 1,
    }
    run = mcli.update_run_metadata(name, sent)
    expected = {
        "team": "nlp",
        "loss": "NaN",
        "best": "Infinity",
        "worst": "-Infinity",
        "deep": {"xs": ["NaN", 1.5]},
        "step": 1,
    }
    assert isinstance(run, mcli.Run)
    assert run.name == name
    assert run.metadata == expected
    assert "'unsendable'" in caplog.text
    assert mcli.get_run(name).metadata == expected


async def test_the_sdk_returns_a_future_with_future_and_runs_update_their_metadata(
    http: httpx.AsyncClient, seeded: Seeded, sdk: None
) -> None:
    name, _ = await new_run(http, seeded)
    pending = mcli.update_run_metadata(name, {"step": 2}, future=True)
    assert isinstance(pending, Future)
    assert pending.result(timeout=30).metadata == {"team": "nlp", "step": 2}

    run = mcli.get_run(name)
    updated = run.update_metadata({"step": 3, "loss": 0.25})
    assert isinstance(updated, mcli.Run)
    assert updated.metadata == {"team": "nlp", "step": 3, "loss": 0.25}

    with pytest.raises(mcli.ClientError) as refused:
        run.update_metadata({"blob": "x" * LIMIT})
    assert refused.value.code == 413
    assert mcli.get_run(name).metadata == updated.metadata


async def test_get_runs_m_shows_a_column_per_metadata_key(
    http: httpx.AsyncClient, served: str, seeded: Seeded, sdk: None, tmp_path: Path
) -> None:
    name, _ = await new_run(http, seeded)
    mcli.update_run_metadata(name, {"mosaicml/training_progress": "[epoch=3/10]", "loss": 0.25})

    def listed() -> bool:
        return any(run.metadata.get("loss") == 0.25 for run in mcli.get_runs(name))

    await eventually(listed, what=f"{name}'s metadata in the projector's listing")
    keys = ["mosaicml/training_progress", "loss", "absent"]
    done = runplane_cli(
        tmp_path, served, seeded.keys[ALICE], "get", "runs", name, *(f"-m{k}" for k in keys)
    )
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    shown = ["TRAINING_PROGRESS", "LOSS", "ABSENT"]
    assert header.split()[-3:] == shown
    starts = [header.index(label) for label in shown]
    cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    assert cells == ["[epoch=3/10]", "0.25", "-"]


PROTECTED = """
import os, signal, sys
import mcli
mcli.update_run_metadata(sys.argv[1], {"last": "flush"}, future=True, protect=True)
os.kill(os.getpid(), signal.SIGTERM)
"""


async def test_a_protected_update_completes_before_sigterm_ends_the_process(
    http: httpx.AsyncClient, served: str, seeded: Seeded, sdk: None
) -> None:
    name, _ = await new_run(http, seeded)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROTECTED,
        name,
        env=os.environ.copy(),  # the SDK's endpoint and key (``sdk``)
        cwd=ROOT_DIR,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, err = await process.communicate()
    assert process.returncode == -signal.SIGTERM, err.decode()  # ended by the signal it sent
    assert mcli.get_run(name).metadata.get("last") == "flush"
