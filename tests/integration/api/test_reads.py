"""The API's reads over a seeded log, in-process: who a key is (every 401), whose runs a caller
sees, MAPI's filters and pagination, clusters, and the codes of bad input."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from bench.mapi import RUNS
from events import codec, keys
from services.api.app import create_app
from services.api.settings import ApiSettings
from services.core.client import connect
from services.core.store import EventStore
from tests.integration.api.seed import (
    ALICE,
    BOB,
    ROOT,
    Seeded,
    add_user_with_key,
    now_ms,
    revoke,
)

# The client's document, verbatim (reference/mapi.md section 5.1).
CLUSTERS = """
query GetClusters($getClustersData: GetClustersInput!) {
  getClusters(getClustersData: $getClustersData) {
    id name provider allowedSubmissionTypes
    utilization {
      instanceUtils {
        instance { name gpuType gpusPerNode numNodes } gpusUsed gpusAvailable gpusTotal
      }
      activeRunsByUser { id runName userName gpuNum scheduling { priority preemptible } }
      queuedRunsByUser { id runName userName gpuNum reason scheduling { priority } }
    }
  }
}"""

INVALID = {"errors": [{"message": "Invalid API key", "extensions": {"code": 401}}]}


async def post(api: httpx.AsyncClient, key: str | None, body: Any) -> dict[str, Any]:
    headers = {} if key is None else {"Authorization": key}
    response = await api.post("/graphql", json=body, headers=headers)
    found: dict[str, Any] = response.json()
    return found


async def runs(api: httpx.AsyncClient, key: str, **data: Any) -> dict[str, Any]:
    variables = {
        "getRunsPaginatedData": {"filters": {}, "includeDeleted": False, "limit": 50} | data
    }
    result = await post(api, key, {"query": RUNS, "variables": variables})
    assert "errors" not in result, result
    page: dict[str, Any] = result["data"]["getRunsPaginated"]
    return page


def names(page: dict[str, Any]) -> list[str]:
    """The page's run names, checked to be newest first (runs stamped in one ms tie: any order)."""
    created = [run["createdAt"] for run in page["runs"]]
    assert created == sorted(created, reverse=True)
    return [run["name"] for run in page["runs"]]


def newest_first(*lists: list[str]) -> set[str]:
    return {name for names_ in lists for name in names_}


# --- who a key is -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer ", "nope", "rpk_abcdefgh_" + "x" * 40, "Basic dXNlcjpwYXNz"],
)
async def test_a_missing_or_wrong_key_is_401_and_nothing_else(
    api: httpx.AsyncClient, seeded: Seeded, header: str | None
) -> None:
    response = await api.post(
        "/graphql",
        json={"query": RUNS, "variables": {"getRunsPaginatedData": {}}},
        headers={} if header is None else {"Authorization": header},
    )
    assert response.json() == INVALID
    assert response.status_code == 401


async def test_a_revoked_key_is_refused_at_once(
    api: httpx.AsyncClient, seeded: Seeded, store: EventStore
) -> None:
    key = seeded.keys[ALICE]
    assert set(names(await runs(api, key))) == newest_first(seeded.runs[ALICE])
    await revoke(store, ALICE, key)
    assert await post(api, key, {"query": "{ __typename }"}) == INVALID


async def test_an_expired_key_is_refused_and_a_bearer_key_accepted(
    api: httpx.AsyncClient, seeded: Seeded, store: EventStore
) -> None:
    an_hour_ago = now_ms() - 3_600_000
    expired = await add_user_with_key(
        store, "carol", "user", issued_at=an_hour_ago - 1000, expires_at=an_hour_ago
    )
    assert await post(api, expired, {"query": "{ __typename }"}) == INVALID
    page = await runs(api, f"Bearer {seeded.keys[BOB]}")
    assert set(names(page)) == newest_first(seeded.runs[BOB])


async def test_an_entry_that_cannot_be_decoded_locks_no_one_out(
    api: httpx.AsyncClient, seeded: Seeded, redis: aioredis.Redis, store: EventStore
) -> None:
    log = keys.log_stream(0)
    await redis.xadd(log, {codec.KIND: b"user.added@1", codec.BODY: b"{not json"})
    await redis.xadd(log, {codec.KIND: b"no.such_kind@1", codec.BODY: b"{}"})
    page = await runs(api, seeded.keys[BOB])
    assert set(names(page)) == newest_first(seeded.runs[BOB])
    later = await add_user_with_key(store, "dave", "user")
    assert (await runs(api, later))["runs"] == [], "a user added after the bad entries"


# --- whose runs -------------------------------------------------------------------------------


async def test_each_user_sees_only_their_own_runs_even_asking_for_others(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    alice, bob = seeded.keys[ALICE], seeded.keys[BOB]
    assert set(names(await runs(api, alice))) == newest_first(seeded.runs[ALICE])
    assert set(names(await runs(api, bob))) == newest_first(seeded.runs[BOB])
    everyone = {"organizationIds": ["runplane"]}
    assert set(names(await runs(api, alice, entity=everyone))) == newest_first(seeded.runs[ALICE])
    assert names(await runs(api, alice, entity={"emails": [BOB]})) == []
    by_name = {"name": {"in": seeded.runs[BOB]}}
    assert names(await runs(api, alice, filters=by_name)) == []


async def test_an_admin_sees_everyone_with_all_users_and_one_user_by_email(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    root = seeded.keys[ROOT]
    assert names(await runs(api, root)) == [], "without entity: the admin's own runs"
    every = await runs(api, root, entity={"organizationIds": ["runplane"]})
    assert set(names(every)) == newest_first(seeded.runs[ALICE], seeded.runs[BOB])
    assert set(names(await runs(api, root, entity={"emails": [BOB]}))) == newest_first(
        seeded.runs[BOB]
    )
    me = await post(
        api,
        root,
        {"query": "query { getUsers(getUsersData: {}) { id email organizations { id } } }"},
    )
    assert me["data"]["getUsers"] == [
        {"id": ROOT, "email": ROOT, "organizations": [{"id": "runplane"}]}
    ]


async def test_a_run_has_every_field_the_client_reads(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    page = await runs(api, seeded.keys[BOB])
    [epsilon] = [run for run in page["runs"] if run["name"] == seeded.runs[BOB][1]]
    assert epsilon["status"] == "PENDING"
    assert epsilon["createdByEmail"] == BOB
    assert epsilon["runType"] == "TRAINING"
    assert epsilon["priority"] == "AUTO"
    assert epsilon["isDeleted"] is False
    assert epsilon["createdAt"].endswith("+00:00")
    [resumption] = epsilon["resumptions"]
    assert resumption["executionIndex"] == 0
    assert resumption["gpus"] == 2
    assert resumption["gpuType"] == "a100"
    assert resumption["clusterName"] == "local"
    assert resumption["startTime"] is None
    assert resumption["endTime"] is None


# --- filters and pages ------------------------------------------------------------------------


async def test_filters_combine_with_and(api: httpx.AsyncClient, seeded: Seeded) -> None:
    alice, everyone = seeded.keys[ROOT], {"organizationIds": ["runplane"]}
    alpha, beta, gamma = seeded.runs[ALICE]
    delta, epsilon = seeded.runs[BOB]

    async def listed(**filters: Any) -> set[str]:
        return set(names(await runs(api, alice, filters=filters, entity=everyone)))

    assert await listed(name={"in": [alpha, delta]}) == {delta, alpha}
    assert await listed(status={"in": ["QUEUED"]}) == {beta}
    assert await listed(status={"in": ["PENDING"]}, gpuNum={"in": [2]}) == {epsilon}
    assert await listed(clusterName={"in": ["local"]}, gpuType={"in": ["a100"]}) == {
        epsilon,
        delta,
        gamma,
        beta,
        alpha,
    }
    assert await listed(clusterName={"in": ["elsewhere"]}) == set()
    assert await listed(runType={"in": ["INTERACTIVE"]}) == set()
    assert await listed(createdAt={"lt": "2000-01-01T00:00:00+00:00"}) == set()
    assert len(await listed(createdAt={"gte": "2000-01-01T05:30:00+05:30"})) == 5
    assert await listed(endedAt={"gte": "2000-01-01T00:00:00Z"}) == set(), "none has ended"


async def test_pages_follow_the_cursor_to_the_end(api: httpx.AsyncClient, seeded: Seeded) -> None:
    root, everyone = seeded.keys[ROOT], {"organizationIds": ["runplane"]}
    seen: list[str] = []
    page = await runs(api, root, entity=everyone, limit=2)
    pages = 1
    while page["hasNextPage"]:
        seen += names(page)
        page = await runs(api, root, entity=everyone, limit=2, cursor=page["cursor"])
        pages += 1
    seen += names(page)
    assert page["cursor"] is None
    assert pages == 3
    assert set(seen) == newest_first(seeded.runs[ALICE], seeded.runs[BOB])
    assert len(seen) == 5
    unlimited = await runs(api, root, entity=everyone, limit=None)
    assert names(unlimited) == seen
    assert unlimited["hasNextPage"] is False


# --- clusters ---------------------------------------------------------------------------------


async def test_clusters_show_their_instances_and_queued_runs(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    body = {
        "query": CLUSTERS,
        "variables": {
            "getClustersData": {"filters": {"allowedSubmissionTypes": {"has": "TRAINING"}}}
        },
    }
    [cluster] = (await post(api, seeded.keys[ALICE], body))["data"]["getClusters"]
    assert cluster["name"] == "local"
    assert cluster["provider"] == "RUNPLANE"
    [instance] = cluster["utilization"]["instanceUtils"]
    assert instance["gpusTotal"] == 8
    assert instance["gpusAvailable"] == 8
    assert instance["instance"]["gpuType"] == "a100"
    queued = {q["runName"]: q for q in cluster["utilization"]["queuedRunsByUser"]}
    assert set(queued) == newest_first(seeded.runs[ALICE], seeded.runs[BOB]), "all wait"
    beta = queued[seeded.runs[ALICE][1]]
    assert beta["reason"] == "Insufficient resources"
    assert beta["userName"] == ALICE
    assert beta["scheduling"]["priority"] == "AUTO"
    assert cluster["utilization"]["activeRunsByUser"] == []
    named = {
        "query": CLUSTERS,
        "variables": {"getClustersData": {"filters": {"name": {"in": ["x"]}}}},
    }
    assert (await post(api, seeded.keys[ALICE], named))["data"]["getClusters"] == []


# --- bad input --------------------------------------------------------------------------------


def code_of(result: dict[str, Any]) -> int:
    [error] = result["errors"]
    assert "traceback" not in str(error).lower()
    code: int = error["extensions"]["code"]
    return code


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'{"query": 3}', 400),
        (b'{"query": "{ getRunsPaginated(", "variables": {}}', 400),
        (b'{"query": "{ nosuchField }"}', 400),
        (b'{"query": "mutation { createRun(createRunData: {runInput: {}}) { id } }"}', 400),
        (
            b'{"query": "subscription { watchRunStatus(watchRunStatusInput: {name: \\"x\\"}) }"}',
            400,
        ),
        (b'{"query": "{ __typename }", "variables": [1]}', 400),
        (b'{"query": "' + b"x" * 5000 + b'"}', 413),
    ],
)
async def test_bad_input_gets_a_code_and_no_traceback(
    api: httpx.AsyncClient, seeded: Seeded, content: bytes, code: int
) -> None:
    response = await api.post(
        "/graphql",
        content=content,
        headers={"Authorization": seeded.keys[ALICE], "Content-Type": "application/json"},
    )
    assert code_of(response.json()) == code
    assert response.status_code == code


async def test_a_document_that_multiplies_its_fields_is_refused(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    spreads = " ".join(["...F1"] * 10)
    bomb = (
        "query { ...F4 }\n"
        "fragment F1 on Query { __typename }\n"
        f"fragment F2 on Query {{ {spreads} }}\n"
        f"fragment F3 on Query {{ {spreads.replace('F1', 'F2')} }}\n"
        f"fragment F4 on Query {{ {spreads.replace('F1', 'F3')} }}\n"
    )  # 1,000 fields from a few hundred bytes
    result = await post(api, seeded.keys[ALICE], {"query": bomb})
    assert code_of(result) == 400
    assert result["errors"][0]["message"] == "Query is too large: over 500 fields"


async def test_bad_variables_are_400(api: httpx.AsyncClient, seeded: Seeded) -> None:
    alice = seeded.keys[ALICE]
    for data in (
        {"filters": {"status": {"in": ["SLEEPING"]}}},
        {"filters": {"createdAt": {"lt": "yesterday"}}},
        {"cursor": "not-a-cursor"},
        {"limit": 0},
        {"filters": {"nope": 1}},
    ):
        result = await post(
            api, alice, {"query": RUNS, "variables": {"getRunsPaginatedData": data}}
        )
        assert code_of(result) == 400, data


async def test_a_store_that_does_not_answer_is_503_which_the_client_retries() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    settings = ApiSettings(redis_url=dead)
    store = EventStore(connect(dead), settings)
    transport = httpx.ASGITransport(app=create_app(settings, store))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.post("/graphql", json={"query": "{ __typename }"})
    finally:
        await store.close()
    assert response.json() == {
        "errors": [
            {
                "message": "Service Unavailable: the event store is not answering",
                "extensions": {"code": 503},
            }
        ]
    }
