"""The API server's edge: one ASGI app (Starlette), ``POST /graphql``, executed by ariadne over
the SDL in ``schema.graphql``.

A request is taken in this order, and the first failure is the whole answer, as a GraphQL error
with an integer ``extensions.code`` and nothing else (``reference/mapi.md`` section 2.1):
1. a body over ``api_max_body_bytes``: 413 (read no further);
2. the ``Authorization`` header (the raw key, or ``Bearer <key>``) must be a valid key of a
   user, or a run's token whose attempt lives (``services.api.users``); without one, the web
   console's session cookie with its CSRF token (``services.api.console``): else 401
   ``Invalid API key``;
3. the body must be a JSON object with a string ``query``: else 400;
4. the document must parse, resolve at most ``api_max_fields`` fields (``services.api.limits``)
   and validate against the schema: else 400 (an unknown field, a document too large);
5. a resolver's ``ApiError`` gives its code; the event store not answering 503 (the one code
   here the client retries, with backoff); anything else 500 "Internal Server Error", logged
   here with its traceback and never sent to the client.
The key (or token) is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog
from ariadne import (
    MutationType,
    QueryType,
    ScalarType,
    graphql,
    load_schema_from_path,
    make_executable_schema,
)
from graphql import DocumentNode, GraphQLError, GraphQLSchema
from graphql import parse as parse_document
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from events.identity import Unauthenticated
from services.api import admin, console, nodes, own, secrets, subscriptions
from services.api import metrics as api_metrics
from services.api.accounts import Accounts
from services.api.context import Context
from services.api.errors import ApiError, BadRequest, TooLarge
from services.api.limits import field_count
from services.api.mutations import RESOLVERS as MUTATIONS
from services.api.reads import RESOLVERS as READS
from services.api.runs import RunRequests
from services.api.settings import ApiSettings
from services.api.users import Directory, presented_credential
from services.api.vault import Vault
from services.api.websocket import GraphQLSockets
from services.core import metrics
from services.core.client import connect_with
from services.core.health import keep_alive
from services.core.sealing import KeyringFile
from services.core.store import EventStore

SCHEMA_PATH = Path(__file__).with_name("schema.graphql")
INVALID_KEY = "Invalid API key"
UNAVAILABLE = "Service Unavailable: the event store is not answering"
STORE_DOWN = (RedisConnectionError, RedisTimeoutError)
log = structlog.get_logger("services.api")


def schema() -> GraphQLSchema:
    query, mutation = QueryType(), MutationType()
    queries = READS | admin.QUERIES | nodes.QUERIES | own.QUERIES | secrets.QUERIES
    for field, resolver in queries.items():
        query.set_field(field, resolver)
    mutations = MUTATIONS | admin.MUTATIONS | nodes.MUTATIONS | secrets.MUTATIONS
    for field, resolver in mutations.items():
        mutation.set_field(field, resolver)
    return make_executable_schema(
        load_schema_from_path(str(SCHEMA_PATH)),
        query,
        mutation,
        ScalarType("JSON"),
        *subscriptions.bindables(),
    )


def failure(code: HTTPStatus, message: str) -> JSONResponse:
    body = {"errors": [{"message": message, "extensions": {"code": int(code)}}]}
    return JSONResponse(body, status_code=int(code))


def format_error(error: GraphQLError, debug: bool = False) -> dict[str, Any]:
    """An error as the client reads it: a message and an integer code, never a traceback."""
    original = error.original_error
    if isinstance(original, STORE_DOWN):
        log.warning("store_unavailable", error=str(original))
        message, code = UNAVAILABLE, HTTPStatus.SERVICE_UNAVAILABLE
    elif isinstance(original, ApiError):
        message, code = original.message, original.code
    elif original is None or isinstance(original, GraphQLError):
        # syntax, validation, variables that do not fit their types: the request's fault
        message, code = unquoted(error.message), HTTPStatus.BAD_REQUEST
    else:
        log.error("resolver_failed", path=error.path, exc_info=original)
        message, code = "Internal Server Error", HTTPStatus.INTERNAL_SERVER_ERROR
    found: dict[str, Any] = {"message": message, "extensions": {"code": int(code)}}
    if error.path:
        found["path"] = error.path
    return found


#: Input types that may hold a secret's value: an error about one never quotes what was sent.
_SEALED_INPUTS = ("CreateSecretInput",)
_FOUND = re.compile(r"[,.]? [Ff]ound: ")


def unquoted(message: str) -> str:
    """``message`` without the value graphql-core quotes (``Found: {...}``) when the value is
    of an input that may hold a secret."""
    if not any(name in message for name in _SEALED_INPUTS):
        return message
    return _FOUND.split(message, maxsplit=1)[0].rstrip(".") + " (what was sent is not repeated)."


def presented_key(request: Request) -> str | None:
    return presented_credential(request.headers.get("authorization"))


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"Request body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"Request body is over {limit} bytes")
    return bytes(body)


def parse(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("Request body is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("query"), str):
        raise BadRequest('Request body must be a JSON object with a "query" string')
    variables = data.get("variables")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest('"variables" must be a JSON object')
    return data


def document(query: str, max_fields: int) -> DocumentNode:
    try:
        parsed = parse_document(query, max_tokens=max_fields * 20)
    except GraphQLError as error:
        raise BadRequest(error.message) from None
    fields = field_count(parsed, max_fields)
    if fields > max_fields:
        raise BadRequest(f"Query is too large: over {max_fields} fields")
    return parsed


async def _guarded(answering: Awaitable[JSONResponse]) -> JSONResponse:
    """The answer, or the failure that an exception out of it is."""
    try:
        return await answering
    except STORE_DOWN as error:
        log.warning("store_unavailable", error=str(error))
        return failure(HTTPStatus.SERVICE_UNAVAILABLE, UNAVAILABLE)
    except Exception:
        log.exception("request_failed")
        return failure(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error")


def create_app(settings: ApiSettings, store: EventStore | None = None) -> Starlette:
    """The app; it opens the event store on ``settings`` unless given one, and closes only the
    one it opened."""
    executable = schema()
    owned = store is None
    events = store if store is not None else EventStore.from_settings(settings)
    # Each stream blocks on a connection of its own: a pool apart, so no number of followers
    # keeps a request waiting for one.
    streams = (
        store
        if store is not None
        else EventStore(connect_with(settings, settings.api_max_streams), settings)
    )
    directory = Directory(events)
    runs = RunRequests(events)
    accounts = Accounts(events, directory)
    keyring = settings.secrets_keyring_file
    vault = Vault(events, None if keyring is None else KeyringFile(keyring))

    async def endpoint(request: Request) -> JSONResponse:
        started = time.perf_counter()
        parsed: list[DocumentNode] = []  # the request's document, once it parsed
        response = await _guarded(answer(request, parsed))
        operation = api_metrics.operation_of(parsed[0] if parsed else None, executable)
        api_metrics.observe(operation, response.status_code, time.perf_counter() - started)
        return response

    async def answer(request: Request, parsed_into: list[DocumentNode]) -> JSONResponse:
        try:
            body = await read_body(request, settings.api_max_body_bytes)
            try:
                credential = console.presented(request, presented_key(request))
                principal = await directory.principal(credential, _now_ms())
            except Unauthenticated as refused:
                log.info("unauthenticated", why=str(refused.why), key_id=refused.key_id)
                return failure(HTTPStatus.UNAUTHORIZED, INVALID_KEY)
            data = parse(body)
            parsed = document(data["query"], settings.api_max_fields)
            parsed_into.append(parsed)
        except ApiError as error:
            return failure(error.code, error.message)
        context = Context(
            principal=principal,
            redis=events.redis,
            settings=settings,
            runs=runs,
            accounts=accounts,
            vault=vault,
        )
        _, result = await graphql(
            executable,
            {"query": data["query"], "variables": data.get("variables") or {}},
            query_document=parsed,
            context_value=context,
            error_formatter=format_error,
            debug=False,
        )
        errors = result.get("errors")
        if errors:
            codes = [e.get("extensions", {}).get("code", 500) for e in errors]
            return JSONResponse(result, status_code=max(codes))
        return JSONResponse(result)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        beat = asyncio.create_task(keep_alive(settings, "api"), name="liveness:api")
        try:
            async with metrics.serving(settings.metrics_host, settings.metrics_port):
                yield
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            if owned:
                await events.close()
                await streams.close()

    sockets = GraphQLSockets(
        executable,
        directory,
        streams,
        settings,
        parse=lambda query: document(query, settings.api_max_fields),
        format_error=format_error,
        invalid_key=INVALID_KEY,
    )
    routes = [
        Route("/graphql", endpoint, methods=["POST"]),
        WebSocketRoute("/graphql", sockets.serve),
        *console.Console(settings, directory, accounts).routes(),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _now_ms() -> int:
    return int(time.time() * 1000)
