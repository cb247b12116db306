"""The web console's edge on a real API process over real Valkey: its page and assets, sign-in
with an API key for a session key in an HttpOnly, SameSite cookie, the CSRF token that every
request carried by the cookie needs (POST and WebSocket), and sign-out (services/api/console.py).
The pages themselves are driven in a real browser by ``tests/e2e/test_console.py``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from events.model import KeyIssued
from services.api.console import CSRF_HEADER, SESSION_COOKIE
from services.api.settings import ApiSettings
from services.core.store import EventStore
from tests.integration.api.conftest import Served
from tests.integration.api.seed import ALICE, BOB, now_ms, submit

WHOAMI = {"query": "{ whoami { name role } }"}
WAIT_S = 30.0


@pytest.fixture
async def web(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    base = served.url.removesuffix("/graphql")
    async with httpx.AsyncClient(base_url=base) as client:
        yield client


async def sign_in(web: httpx.AsyncClient, key: str) -> tuple[str, str]:
    """The session key (from the cookie) and the CSRF token."""
    answer = await web.post("/console/session", json={"key": key})
    assert answer.status_code == 200, answer.text
    web.cookies.clear()  # each request below says which cookie it carries
    return answer.cookies[SESSION_COOKIE], answer.json()["csrf"]


def carried(session: str, csrf: str | None = None, **headers: str) -> dict[str, str]:
    found = {"cookie": f"{SESSION_COOKIE}={session}", **headers}
    if csrf is not None:
        found[CSRF_HEADER] = csrf
    return found


async def test_the_page_and_its_assets_are_served_under_a_strict_policy(
    web: httpx.AsyncClient,
) -> None:
    page = await web.get("/")
    assert page.status_code == 200
    assert '<script type="module" src="/console/assets/console.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    asset = await web.get("/console/assets/console.js")
    assert asset.status_code == 200
    assert "javascript" in asset.headers["content-type"]
    assert asset.headers["x-content-type-options"] == "nosniff"
    assert (await web.get("/console/assets/vendor/js-yaml.LICENSE")).status_code == 200
    assert (await web.get("/console/assets/../console.py")).status_code == 404
    assert (await web.get("/console/assets/nothing.js")).status_code == 404


async def test_a_wrong_key_is_refused_and_sets_no_cookie(
    web: httpx.AsyncClient, served: Served
) -> None:
    wrong = served.keys[ALICE][:-4] + "abcd"
    for key in (wrong, "rpk_nothing_like_a_key", "x"):
        answer = await web.post("/console/session", json={"key": key})
        assert (answer.status_code, answer.json()) == (401, {"error": "Invalid API key"})
        assert SESSION_COOKIE not in answer.cookies
    for body in ({"key": ""}, {"nokey": 1}, ["a"]):
        answer = await web.post("/console/session", json=body)
        assert answer.status_code == 400
        assert "your API key" in answer.json()["error"]
    garbled = await web.post("/console/session", content=b"{", headers={"content-type": "x"})
    assert garbled.status_code == 400
    foreign = await web.post(
        "/console/session",
        json={"key": served.keys[ALICE]},
        headers={"origin": "http://evil.example"},
    )
    assert foreign.status_code == 403
    assert SESSION_COOKIE not in foreign.cookies
    assert (await web.get("/console/session")).json() == {"user": None}


async def test_sign_in_sets_an_httponly_strict_cookie_holding_a_session_key_of_the_user(
    web: httpx.AsyncClient, served: Served, store: EventStore
) -> None:
    before = now_ms()
    answer = await web.post("/console/session", json={"key": served.keys[ALICE]})
    assert answer.status_code == 200
    cookie = answer.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/", "max-age=43200"):
        assert attribute in cookie
    assert "secure" not in cookie  # plain http here; https gets Secure
    session = answer.cookies[SESSION_COOKIE]
    assert session != served.keys[ALICE]
    assert answer.json()["user"] == ALICE
    assert answer.json()["role"] == "user"
    assert [s["name"] for s in answer.json()["statuses"]][:2] == ["PENDING", "QUEUED"]
    # the session key is an ordinary key of alice's, issued by alice, that expires
    issued = [
        r.event
        for r in await store.history(f"user:{ALICE}")
        if isinstance(r.event, KeyIssued) and r.event.key_id == session.split("_")[1]
    ]
    assert len(issued) == 1
    assert issued[0].actor == ALICE
    lifetime = ApiSettings().api_console_session_seconds * 1000
    assert issued[0].expires_at is not None
    assert before + lifetime <= issued[0].expires_at <= now_ms() + lifetime
    web.cookies.clear()
    who = await web.get("/console/session", headers=carried(session))
    assert who.json()["user"] == ALICE
    assert who.json()["csrf"] == answer.json()["csrf"]


async def test_a_request_carried_by_the_cookie_needs_its_csrf_token_and_this_origin(
    web: httpx.AsyncClient, served: Served
) -> None:
    session, csrf = await sign_in(web, served.keys[ALICE])
    _, bobs_csrf = await sign_in(web, served.keys[BOB])
    here = web.base_url.netloc.decode()
    refusals = [
        carried(session),  # no token
        carried(session, "0" * 40),
        carried(session, bobs_csrf),  # another session's
        carried(session, csrf, origin="http://evil.example"),
        carried(session, csrf, origin=f"http://{here}.evil.example"),
    ]
    for headers in refusals:
        answer = await web.post("/graphql", json=WHOAMI, headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["errors"][0]["message"] == "Invalid API key"
    for headers in (carried(session, csrf), carried(session, csrf, origin=f"http://{here}")):
        answer = await web.post("/graphql", json=WHOAMI, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["whoami"] == {"name": ALICE, "role": "user"}
    # a key in the Authorization header is judged alone: the cookie does not make it alice
    answer = await web.post(
        "/graphql",
        json=WHOAMI,
        headers={**carried(session, csrf), "authorization": served.keys[BOB]},
    )
    assert answer.json()["data"]["whoami"]["name"] == BOB


async def test_sign_out_revokes_the_session_key(web: httpx.AsyncClient, served: Served) -> None:
    session, csrf = await sign_in(web, served.keys[ALICE])
    assert (await web.delete("/console/session", headers=carried(session))).status_code == 401
    out = await web.delete("/console/session", headers=carried(session, csrf))
    assert out.status_code == 200
    assert f'{SESSION_COOKIE}=""' in out.headers["set-cookie"]
    answer = await web.post("/graphql", json=WHOAMI, headers=carried(session, csrf))
    assert answer.status_code == 401
    assert (await web.get("/console/session", headers=carried(session))).json() == {"user": None}
    # alice's own key still works
    answer = await web.post("/graphql", json=WHOAMI, headers={"authorization": served.keys[ALICE]})
    assert answer.status_code == 200


async def _watch(url: str, headers: dict[str, str], payload: dict[str, Any], run: str) -> Any:
    """The first result of a watchRunStatus over the WebSocket, sent with ``headers``."""
    query = "subscription W($i: WatchRunStatusInput!) { watchRunStatus(watchRunStatusInput: $i) }"
    async with asyncio.timeout(WAIT_S):
        async with connect(
            url.replace("http://", "ws://"),
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            additional_headers=headers,
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            variables = {"i": {"name": run}}
            message = {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": query, "variables": variables},
            }
            await ws.send(json.dumps(message))
            return json.loads(await ws.recv())["payload"]


async def test_a_subscription_carried_by_the_cookie_needs_the_token_and_this_origin(
    web: httpx.AsyncClient, served: Served, store: EventStore
) -> None:
    run = await submit(store, ALICE, "watched")
    session, csrf = await sign_in(web, served.keys[ALICE])
    here = f"http://{web.base_url.netloc.decode()}"
    cookie = {"cookie": f"{SESSION_COOKIE}={session}"}
    answer = await _watch(served.url, {**cookie, "origin": here}, {"csrf": csrf}, run)
    assert "errors" not in answer, answer
    assert answer["data"]["watchRunStatus"] in {"PENDING", "QUEUED"}
    for headers, payload in (
        ({**cookie, "origin": here}, {}),
        ({**cookie, "origin": here}, {"csrf": "0" * 40}),
        ({**cookie, "origin": "http://evil.example"}, {"csrf": csrf}),
    ):
        refused = await _watch(served.url, headers, payload, run)
        assert refused["errors"][0]["message"] == "Invalid API key", (headers, payload)
