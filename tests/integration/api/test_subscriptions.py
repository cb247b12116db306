"""The API's subscriptions over a raw WebSocket, in each subprotocol, against a real
``python -m services.api`` process, a real log-collector and the session's Valkey: acks, log
reads (whole, tail, resumed inside a character, the first failed rank), a follow that ends with
its attempt, status watches, and every per-subscription error, the socket staying open."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from services.core.store import EventStore
from tests.integration.api.conftest import api_server, logs_api
from tests.integration.api.runs import LiveRun
from tests.integration.api.seed import ALICE, BOB, Seeded
from tests.integration.api.wsclient import LOGS, WATCH, socket

CHUNK = 37  # bytes: small enough to cut lines and characters
LINES = [b"step 1 loss 0.5", "caf\u00e9 \U0001f415 ok".encode(), b"", b"step 3 done"]
STREAM = b"".join(line + b"\n" for line in LINES)


@pytest.fixture(params=["graphql-transport-ws", "graphql-ws"])
async def url(
    request: pytest.FixtureRequest,
    redis_url: str,
    redis: aioredis.Redis,
    tmp_path: Path,
    seeded: Seeded,
) -> AsyncIterator[str]:
    settings = {"api_ws_protocols": request.param, "api_log_chunk_bytes": str(CHUNK)}
    async with logs_api(redis_url, redis, tmp_path, **settings) as served:
        yield served


async def running(store: EventStore, nodes: int = 1) -> LiveRun:
    run = await LiveRun.start(store, ALICE, "train", nodes=nodes)
    await run.write(0, LINES)
    await run.stored(0, len(LINES))
    return run


async def test_logs_whole_tail_and_resumed_inside_a_character(
    url: str, store: EventStore, seeded: Seeded
) -> None:
    run = await running(store)
    async with socket(url, seeded.keys[ALICE]) as ws:
        data, ends, errors = await ws.logs("1", name=run.name, follow=False, offset=0)
        assert errors == []
        assert data == STREAM
        assert ends[-1] == len(STREAM)
        assert all(0 < b - a <= CHUNK for a, b in zip([0, *ends], ends, strict=False))

        data, ends, _ = await ws.logs("2", name=run.name, follow=False, offset=0, tail=2)
        assert data == b"\nstep 3 done\n"
        assert ends[-1] == len(STREAM), "offsets stay absolute"

        inside = STREAM.index("\U0001f415".encode()) + 2
        data, ends, _ = await ws.logs("3", name=run.name, follow=False, offset=inside, tail=1)
        assert data == STREAM[inside:], "tail counts only from offset 0"
        data, ends, _ = await ws.logs("4", name=run.name, follow=False, offset=len(STREAM))
        assert (data, ends) == (b"", [])


async def test_failed_picks_the_first_failed_rank(
    url: str, store: EventStore, seeded: Seeded
) -> None:
    run = await running(store, nodes=2)
    await run.write(1, [b"Traceback (most recent call last):", b'  File "x"', b"ValueError: no"])
    await run.write(1, [b"after"])
    await run.stored(1, 4)
    await run.finish(failed_rank=1)
    async with socket(url, seeded.keys[ALICE]) as ws:
        data, _, _ = await ws.logs("1", name=run.name, follow=False, offset=0, failed=True)
        assert data.startswith(b"Traceback")
        assert data.endswith(b"after\n")
        data, _, _ = await ws.logs("2", name=run.name, follow=False, offset=0, nodeRank=0)
        assert data == STREAM
        data, _, _ = await ws.logs(
            "3", name=run.name, follow=False, offset=0, failed=True, exceptionOnly=True
        )
        assert data == b'Traceback (most recent call last):\n  File "x"\nValueError: no\n'


async def test_follow_ends_when_the_attempt_ends(
    url: str, store: EventStore, seeded: Seeded
) -> None:
    run = await running(store)
    async with socket(url, seeded.keys[ALICE]) as ws:
        follow = {"name": run.name, "follow": True, "nodeRank": 0, "offset": 0}
        await ws.subscribe("1", LOGS, {"getRunLogsInput": follow})
        seen = b""
        while len(seen) < len(STREAM):
            seen += base64.b64decode((await ws.next_data("1"))["getRunLogsV2"]["chunk"])
        assert seen == STREAM
        await run.write(0, [b"last words"])
        await run.finish()
        data, _, errors = await ws.logs_results("1")
        assert errors == []
        assert seen + data == STREAM + b"last words\n"


async def test_watch_sends_the_status_then_each_change_then_completes(
    url: str, store: EventStore, seeded: Seeded
) -> None:
    run = await running(store)
    async with socket(url, seeded.keys[ALICE]) as ws:
        await ws.subscribe("1", WATCH, {"watchRunStatusInput": {"name": run.name}})
        assert (await ws.next_data("1"))["watchRunStatus"] == "RUNNING"
        await run.finish()
        data, errors = await ws.results("1")
        assert errors == []
        assert [d["watchRunStatus"] for d in data] == ["TERMINATING", "COMPLETED"]
        await ws.subscribe("2", WATCH, {"watchRunStatusInput": {"name": run.name}})
        data, _ = await ws.results("2")
        assert [d["watchRunStatus"] for d in data] == ["COMPLETED"], "a finished run at once"


async def test_each_failure_is_one_subscriptions_error_and_the_socket_stays(
    url: str, store: EventStore, seeded: Seeded
) -> None:
    run = await running(store)
    bobs = seeded.runs[BOB][0]
    async with socket(url, seeded.keys[ALICE]) as ws:
        _, _, errors = await ws.logs("1", name="nope", follow=False, offset=0)
        assert _only(errors) == ("Run nope not found", 404)
        _, _, errors = await ws.logs("2", name=bobs, follow=False, offset=0)
        assert _only(errors) == (f"Run {bobs} not found", 404), "another user's: not found"
        await ws.subscribe("3", WATCH, {"watchRunStatusInput": {"name": bobs}})
        assert (await ws.results("3"))[1][0]["extensions"]["code"] == 404
        _, _, errors = await ws.logs("4", name=run.name, follow=False, offset=0, tail=-1)
        assert errors[0]["extensions"]["code"] == 400
        _, _, errors = await ws.logs("5", name=run.name, follow=False, offset=-1)
        assert errors[0]["extensions"]["code"] == 400
        _, _, errors = await ws.logs("6", name=run.name, follow=False, localGpuRank=0)
        assert errors[0]["extensions"]["code"] == 400
        await ws.subscribe("7", "{ getUsers(getUsersData: {}) { id } }", {})
        assert (await ws.results("7"))[1][0]["extensions"]["code"] == 400
        data, _, errors = await ws.logs("8", name=run.name, follow=False, offset=0)
        assert (data, errors) == (STREAM, [])
    async with socket(url, seeded.keys[ALICE][:-4] + "AAAA") as ws:
        _, _, errors = await ws.logs("1", name=run.name, follow=False, offset=0)
        assert _only(errors) == ("Invalid API key", 401)
        await ws.subscribe("2", WATCH, {"watchRunStatusInput": {"name": run.name}})
        assert (await ws.results("2"))[1][0]["extensions"]["code"] == 401


async def test_a_stop_from_the_client_ends_the_stream(
    url: str, store: EventStore, seeded: Seeded
) -> None:
    run = await running(store)
    async with socket(url, seeded.keys[ALICE]) as ws:
        await ws.subscribe("1", WATCH, {"watchRunStatusInput": {"name": run.name}})
        assert (await ws.next_data("1"))["watchRunStatus"] == "RUNNING"
        await ws.stop("1")
        if ws.apollo:
            assert await ws.receive() == {"type": "complete", "id": "1"}
        if not ws.apollo:
            await ws.send({"type": "ping"})
            assert await ws.receive() == {"type": "pong"}
        await run.finish()
        await ws.subscribe("2", WATCH, {"watchRunStatusInput": {"name": run.name}})
        data, _ = await ws.results("2")  # asserts every message is for "2": none more for "1"
        assert [d["watchRunStatus"] for d in data] == ["COMPLETED"]


async def test_the_subprotocol_is_the_preferred_one_offered(url: str, seeded: Seeded) -> None:
    async with socket(url, seeded.keys[ALICE]) as ws:
        assert ws.connection.response is not None
        assert ws.connection.response.headers["Sec-WebSocket-Protocol"] == ws.protocol


def _only(errors: list[dict[str, Any]]) -> tuple[str, int]:
    """The one error's message and code."""
    assert len(errors) == 1, errors
    return errors[0]["message"], errors[0]["extensions"]["code"]


async def test_past_its_limit_of_streams_a_subscription_is_503_and_requests_still_answer(
    redis_url: str, redis: aioredis.Redis, tmp_path: Path, store: EventStore, seeded: Seeded
) -> None:
    """Streams hold connections of their own: at the limit a new one is refused (503, which a
    client tries again), and requests go on being answered all the while."""
    run = await running_without_collector(store)
    async with (
        api_server(redis_url, tmp_path / "api.log", api_max_streams="1") as served,
        socket(served, seeded.keys[ALICE]) as ws,
    ):
        await ws.subscribe("1", WATCH, {"watchRunStatusInput": {"name": run.name}})
        assert (await ws.next_data("1"))["watchRunStatus"] == "RUNNING"
        await ws.subscribe("2", WATCH, {"watchRunStatusInput": {"name": run.name}})
        _, errors = await ws.results("2")
        assert _only(errors)[1] == 503
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                served,
                json={"query": "{ whoami { name } }"},
                headers={"Authorization": seeded.keys[ALICE]},
            )
        assert answer.json() == {"data": {"whoami": {"name": ALICE}}}
        await run.finish()
        data, _ = await ws.results("1")
        assert [d["watchRunStatus"] for d in data][-1] == "COMPLETED"
        await ws.subscribe("3", WATCH, {"watchRunStatusInput": {"name": run.name}})
        data, errors = await ws.results("3")
        assert (errors, [d["watchRunStatus"] for d in data]) == ([], ["COMPLETED"])


async def running_without_collector(store: EventStore) -> LiveRun:
    return await LiveRun.start(store, ALICE, "train", nodes=1)
