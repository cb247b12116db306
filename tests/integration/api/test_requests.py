"""The API's requests on runs, in-process over the session's Valkey: MAPI's createRun, stopRuns,
startRuns, deleteRuns and updateRun with the client's documents, decided by who the key is.

Each refusal is checked to append nothing: the log's length before and after."""

from __future__ import annotations

from typing import Any

import httpx
import redis.asyncio as aioredis

from bench.mapi import CREATE, RUN_FIELDS
from events import codec, keys
from events.model import RequestRefused, RunSubmitted, StopRequested, UpdateRequested
from services.core.store import EventStore
from tests import raw
from tests.integration.api.seed import ALICE, BOB, ROOT, Seeded
from tests.integration.api.test_reads import code_of, post

STOP = f"""
mutation StopRuns($getRunsData: GetRunsInput!, $stopRunsData: StopRunsInput) {{
  stopRuns(getRunsData: $getRunsData, stopRunsData: $stopRunsData) {{ {RUN_FIELDS} }}
}}"""
START = f"""
mutation StartRuns($getRunsData: GetRunsInput!) {{
  startRuns(getRunsData: $getRunsData) {{ {RUN_FIELDS} }}
}}"""
DELETE = f"""
mutation DeleteRuns($getRunsData: GetRunsInput!) {{
  deleteRuns(getRunsData: $getRunsData) {{ {RUN_FIELDS} }}
}}"""
UPDATE = f"""
mutation UpdateRun($getRunsData: GetRunsInput!, $updateRunData: UpdateRunInput!) {{
  updateRun(getRunsData: $getRunsData, updateRunData: $updateRunData) {{
    {RUN_FIELDS} maxDurationSeconds
  }}
}}"""

# The client's runInput for a YAML with compute, scheduling, integrations, env and parameters
# (reference/mapi.md section 5.2), on the seeded cluster.
RUN_INPUT: dict[str, Any] = {
    "integrations": [
        {
            "type": "git_repo",
            "params": {"gitRepo": "mosaicml/composer", "gitBranch": "main", "pipInstall": "-e ."},
        }
    ],
    "envVariables": [{"envKey": "FOO", "envValue": "bar"}],
    "parameters": {"lr": 0.1, "nested": {"a": [1, 2]}},
    "image": "mosaicml/pytorch:latest",
    "runName": "my-test-run",
    "cpus": 0,
    "command": "echo hello\nsleep 1",
    "scheduling": {
        "priority": "low",
        "preemptible": True,
        "maxRetries": 1,
        "retryOnSystemFailure": False,
        "maxDuration": 1.5,
    },
    "compute": {"cluster": "local", "gpus": 8, "gpuType": "a100", "nodes": 1},
    "metadata": {"team": "nlp"},
    "dependentDeployment": {},
    "parentName": None,
}


def named(*names: str, entity: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"filters": {"name": {"in": list(names)}}}
    if entity:
        data["entity"] = {"organizationIds": ["runplane"]}
    return data


async def log_length(redis: aioredis.Redis) -> int:
    """Entries of the log that change something: every one but the records of refusals."""
    kinds = [fields[codec.KIND] for _, fields in await raw.xrange(redis, keys.log_stream(0))]
    return sum(codec.current_type(kind) is not RequestRefused for kind in kinds)


async def refusals(store: EventStore, user: str) -> list[RequestRefused]:
    history = await store.history(f"user:{user}")
    return [r.event for r in history if isinstance(r.event, RequestRefused)]


async def create(api: httpx.AsyncClient, key: str, **changes: Any) -> dict[str, Any]:
    return await post(
        api,
        key,
        {"query": CREATE, "variables": {"createRunData": {"runInput": RUN_INPUT | changes}}},
    )


async def test_create_run_returns_the_one_pending_run_submitted_by_the_keys_owner(
    api: httpx.AsyncClient, seeded: Seeded, store: EventStore
) -> None:
    result = await create(api, seeded.keys[ALICE])
    assert "errors" not in result, result
    [run] = result["data"]["createRun"]
    assert run["name"].startswith("my-test-run-")
    assert run["createdByEmail"] == ALICE
    assert run["status"] == "PENDING"
    assert [r["executionIndex"] for r in run["resumptions"]] == [0]
    assert (run["priority"], run["preemptible"], run["maxRetries"]) == ("LOW", True, 1)
    stored = run["details"]["originalRunInput"]
    assert stored["integrations"] == RUN_INPUT["integrations"]
    assert stored["envVariables"] == RUN_INPUT["envVariables"]
    assert stored["compute"] == RUN_INPUT["compute"]
    assert run["details"]["metadata"] == {"team": "nlp"}
    [record] = await store.history(f"run:{run['id']}")
    assert isinstance(record.event, RunSubmitted)
    assert record.event.actor == ALICE


async def test_a_bad_run_request_is_400_in_the_clients_words_and_appends_nothing(
    api: httpx.AsyncClient, seeded: Seeded, redis: aioredis.Redis
) -> None:
    before = await log_length(redis)
    key = seeded.keys[ALICE]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"image": None}, "Bad run request: image is a required field"),
        ({"command": ""}, "Bad run request: command is a required field"),
        ({"compute": {"cluster": "local", "gpuz": 1}}, "did you mean 'gpus'"),
        ({"scheduling": {"priority": "urgent"}}, "scheduling.priority"),
        ({"compute": {"cluster": "local", "gpus": 1000}}, "can hold it"),
        ({"compute": {"cluster": "elsewhere", "gpus": 1}}, "Cluster elsewhere not found"),
        ({"parentName": 7}, "parentName must be the name of a run"),
        ({"envVariables": "FOO=bar"}, "runInput.envVariables: expected a list"),
    ]
    for changes, words in cases:
        result = await create(api, key, **changes)
        assert code_of(result) == 400, (changes, result)
        assert words in result["errors"][0]["message"], (changes, result)
    assert await log_length(redis) == before


async def test_a_user_stops_their_own_run_and_another_users_is_not_found(
    api: httpx.AsyncClient, seeded: Seeded, store: EventStore, redis: aioredis.Redis
) -> None:
    alices = seeded.runs[ALICE][1]  # queued: a stop ends it at once
    before = await log_length(redis)
    refused = await post(
        api, seeded.keys[BOB], {"query": STOP, "variables": {"getRunsData": named(alices)}}
    )
    assert code_of(refused) == 404
    assert refused["errors"][0]["message"] == f"Run {alices} not found"
    assert await log_length(redis) == before
    [record] = await refusals(store, BOB)
    assert (record.actor, record.request, record.target, record.code) == (BOB, "stop", alices, 404)
    assert record.run_id is not None
    result = await post(
        api,
        seeded.keys[ALICE],
        {
            "query": STOP,
            "variables": {"getRunsData": named(alices), "stopRunsData": {"reason": "done"}},
        },
    )
    assert "errors" not in result, result
    [run] = result["data"]["stopRuns"]
    assert run["status"] == "STOPPED"
    stops = [
        r.event
        for r in await store.history(f"run:{run['id']}")
        if isinstance(r.event, StopRequested)
    ]
    assert [(s.actor, s.reason) for s in stops] == [(ALICE, "done")]


async def test_an_admin_acts_on_another_users_run_only_when_asking_for_it(
    api: httpx.AsyncClient, seeded: Seeded, store: EventStore, redis: aioredis.Redis
) -> None:
    bobs = seeded.runs[BOB][0]
    before = await log_length(redis)
    refused = await post(
        api, seeded.keys[ROOT], {"query": STOP, "variables": {"getRunsData": named(bobs)}}
    )
    assert code_of(refused) == 403
    assert "add --all-users" in refused["errors"][0]["message"]
    assert await log_length(redis) == before
    result = await post(
        api,
        seeded.keys[ROOT],
        {"query": STOP, "variables": {"getRunsData": named(bobs, entity=True)}},
    )
    assert "errors" not in result, result
    [run] = result["data"]["stopRuns"]
    stops = [
        r.event
        for r in await store.history(f"run:{run['id']}")
        if isinstance(r.event, StopRequested)
    ]
    assert [s.actor for s in stops] == [ROOT]


async def test_one_refused_run_refuses_the_whole_request(
    api: httpx.AsyncClient, seeded: Seeded, redis: aioredis.Redis
) -> None:
    mine, theirs = seeded.runs[ALICE][0], seeded.runs[BOB][0]
    before = await log_length(redis)
    for names in ((mine, "no-such-run"), (mine, theirs)):
        result = await post(
            api, seeded.keys[ALICE], {"query": STOP, "variables": {"getRunsData": named(*names)}}
        )
        assert code_of(result) == 404, result
    assert await log_length(redis) == before


async def test_requests_select_runs_by_name_only(api: httpx.AsyncClient, seeded: Seeded) -> None:
    key = seeded.keys[ALICE]
    nothing = await post(api, key, {"query": STOP, "variables": {"getRunsData": {"filters": {}}}})
    assert code_of(nothing) == 400
    assert "filters.name.in" in nothing["errors"][0]["message"]
    by_status = {
        "filters": {"name": {"in": [seeded.runs[ALICE][0]]}, "status": {"in": ["RUNNING"]}}
    }
    result = await post(api, key, {"query": STOP, "variables": {"getRunsData": by_status}})
    assert code_of(result) == 400
    assert "filters.status" in result["errors"][0]["message"]


async def test_restart_adds_a_resumption_and_a_running_run_is_409(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    key, run = seeded.keys[ALICE], seeded.runs[ALICE][1]
    busy = await post(api, key, {"query": START, "variables": {"getRunsData": named(run)}})
    assert code_of(busy) == 409
    assert "stop it first" in busy["errors"][0]["message"]
    await post(api, key, {"query": STOP, "variables": {"getRunsData": named(run)}})
    result = await post(api, key, {"query": START, "variables": {"getRunsData": named(run)}})
    assert "errors" not in result, result
    [started] = result["data"]["startRuns"]
    assert started["status"] == "PENDING"
    assert [r["executionIndex"] for r in started["resumptions"]] == [0, 1]
    missing = await post(api, key, {"query": START, "variables": {"getRunsData": named("nope")}})
    assert code_of(missing) == 404


async def test_a_deleted_run_refuses_every_request_after(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    key, run = seeded.keys[ALICE], seeded.runs[ALICE][1]
    result = await post(api, key, {"query": DELETE, "variables": {"getRunsData": named(run)}})
    assert "errors" not in result, result
    [gone] = result["data"]["deleteRuns"]
    assert gone["isDeleted"]
    again = await post(api, key, {"query": STOP, "variables": {"getRunsData": named(run)}})
    assert code_of(again) == 409
    assert "is deleted" in again["errors"][0]["message"]


async def test_update_run_changes_only_what_it_names(
    api: httpx.AsyncClient, seeded: Seeded, store: EventStore
) -> None:
    key, run = seeded.keys[ALICE], seeded.runs[ALICE][1]
    data = {"priority": "low", "maxRetries": 3, "preemptible": False, "maxDurationSeconds": 1800}
    result = await post(
        api, key, {"query": UPDATE, "variables": {"getRunsData": named(run), "updateRunData": data}}
    )
    assert "errors" not in result, result
    [updated] = result["data"]["updateRun"]
    assert (updated["priority"], updated["maxRetries"], updated["preemptible"]) == ("LOW", 3, False)
    assert updated["maxDurationSeconds"] == 1800
    [request] = [
        r.event
        for r in await store.history(f"run:{updated['id']}")
        if isinstance(r.event, UpdateRequested)
    ]
    assert (request.actor, request.retry_on_system_failure, request.max_duration) == (
        ALICE,
        None,
        0.5,
    )
    for bad in ({"priority": "urgent"}, {"maxRetries": -1}, {"maxDurationSeconds": 0}):
        refused = await post(
            api,
            key,
            {"query": UPDATE, "variables": {"getRunsData": named(run), "updateRunData": bad}},
        )
        assert code_of(refused) == 400, (bad, refused)


METADATA = f"""
mutation UpdateRunMetadata(
  $getRunsData: GetRunsInput!, $updateRunMetadataData: UpdateRunMetadataInput!
) {{
  updateRunMetadata(getRunsData: $getRunsData, updateRunMetadataData: $updateRunMetadataData) {{
    {RUN_FIELDS}
    details {{ metadata }}
  }}
}}"""


async def test_metadata_updates_merge_and_only_the_owner_may(
    api: httpx.AsyncClient, seeded: Seeded, redis: aioredis.Redis
) -> None:
    created = await create(api, seeded.keys[ALICE])
    name = created["data"]["createRun"][0]["name"]

    async def update(key: str, metadata: Any) -> dict[str, Any]:
        variables = {"getRunsData": named(name), "updateRunMetadataData": {"metadata": metadata}}
        return await post(api, key, {"query": METADATA, "variables": variables})

    first = await update(seeded.keys[ALICE], {"loss": 0.5, "bad": "NaN"})
    assert "errors" not in first, first
    [run] = first["data"]["updateRunMetadata"]
    assert run["details"]["metadata"] == {"team": "nlp", "loss": 0.5, "bad": "NaN"}
    second = await update(seeded.keys[ALICE], {"loss": 0.25})
    [run] = second["data"]["updateRunMetadata"]
    assert run["details"]["metadata"] == {"team": "nlp", "loss": 0.25, "bad": "NaN"}
    before = await log_length(redis)
    assert code_of(await update(seeded.keys[BOB], {"loss": 9})) == 404
    assert code_of(await update(seeded.keys[ALICE], [1, 2])) == 400
    assert await log_length(redis) == before
