"""The WebSocket transport of ``/graphql``: subscriptions over ``graphql-transport-ws`` and the
legacy Apollo ``graphql-ws``, on one route (``reference/mapi.md`` section 3).

Why not ariadne's ``GraphQLTransportWSHandler`` and ``GraphQLWSHandler``: an app takes one of
them, and each accepts its one subprotocol whatever the client offered; the legacy one stops an
operation by closing its generator from the reader while another task iterates it (a
RuntimeError, and a subscription blocked in a Redis read keeps running), and does not cancel
its operations' tasks when the socket drops; a refused ``connection_init`` is
``connection_error`` and a close, which the real client answers by reconnecting forever; their
errors go to the standard logger with tracebacks. What the client needs is small; it is here.

Invariants:
- The subprotocol is the first of ``api_ws_protocols`` (the preference order) that the client
  offers, echoed; a client offering none speaks ``graphql-ws`` (what the real client assumes
  then), one offering only others is refused.
- ``connection_init`` is always acknowledged. The key it carries (``payload.Authorization``, raw
  or ``Bearer <key>``; else the web console's session cookie, when ``payload.csrf`` is its
  token: ``services.api.console``) is checked at each subscribe, so a key revoked meanwhile
  counts.
- A subscription's failure is its own: one result with ``errors`` (integer codes as over HTTP:
  401 ``Invalid API key``, 400 bad input, 404 a run not found or not the caller's, 503 the
  event store not answering, 500 anything else, logged here and never sent), then
  ``complete``; the socket stays open. Every stream that ends ends with one ``complete``;
  a subscription the client stopped (``stop``, ``complete``) gets none in ``graphql-transport-ws``
  and one in ``graphql-ws``, as the protocols have it.
- Each subscription runs in a task of its own; a stop, ``connection_terminate`` or the socket
  closing cancels it, and with it any Redis read it waits on.
- Only subscriptions are served here; queries and mutations are POST (400 over the socket).
- Messages are sent one at a time. Only a broken protocol closes the socket (4400 a message
  that is not one, 4401 a subscribe before ``connection_init``, 4409 an id in use, 4429 a
  second ``connection_init`` in ``graphql-transport-ws``). The key is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

import structlog
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    OperationType,
    get_operation_ast,
    subscribe,
    validate,
)
from starlette.websockets import WebSocket, WebSocketDisconnect

from events.identity import Unauthenticated
from services.api import console
from services.api.errors import BadRequest, Unauthorized, Unavailable
from services.api.settings import ApiSettings
from services.api.subscriptions import SubscriptionContext
from services.api.users import Directory, presented_credential
from services.core.store import EventStore

Json = dict[str, Any]
log = structlog.get_logger("services.api")


@dataclass(frozen=True)
class Dialect:
    """One subprotocol's names for the same messages."""

    name: str
    start: str  # client: run this subscription
    stop: str  # client: stop it
    data: str  # server: one result
    reply_to_stop: bool  # server: complete after the client's stop
    strict_init: bool  # a second connection_init closes the socket (4429)


DIALECTS = {
    d.name: d
    for d in (
        Dialect("graphql-transport-ws", "subscribe", "complete", "next", False, True),
        Dialect("graphql-ws", "start", "stop", "data", True, False),
    )
}
_ASSUMED = "graphql-ws"


def choose_protocol(offered: list[str], served: list[str]) -> str | None:
    """The subprotocol to speak: the first served one the client offers."""
    if not offered:
        return _ASSUMED if _ASSUMED in served else None
    return next((p for p in served if p in offered), None)


def presented_key(payload: object) -> str | None:
    """The key or token in a ``connection_init`` payload."""
    header = payload.get("Authorization") if isinstance(payload, dict) else None
    return presented_credential(header if isinstance(header, str) else None)


class GraphQLSockets:
    """The WebSocket endpoint; ``parse`` and ``format_error`` are the HTTP endpoint's, so a
    document and an error read the same over both."""

    def __init__(
        self,
        schema: GraphQLSchema,
        directory: Directory,
        store: EventStore,
        settings: ApiSettings,
        *,
        parse: Callable[[str], DocumentNode],
        format_error: Callable[[GraphQLError], Json],
        invalid_key: str,
    ) -> None:
        self.schema = schema
        self.directory = directory
        self.store = store
        self.settings = settings
        self.parse = parse
        self.format_error = format_error
        self.invalid_key = invalid_key
        self.streaming = 0  # subscriptions running now, at most settings.api_max_streams

    async def serve(self, websocket: WebSocket) -> None:
        offered = list(websocket.scope.get("subprotocols") or [])
        protocol = choose_protocol(offered, self.settings.ws_protocols)
        if protocol is None:
            log.info("ws_refused", offered=offered)
            await websocket.close(code=1002)
            return
        await websocket.accept(subprotocol=protocol if offered else None)
        await _Connection(self, websocket, DIALECTS[protocol]).serve()

    async def results(self, key: str | None, payload: object) -> AsyncIterator[Json]:
        """The results of one subscribe's payload, formatted; a failure before the stream
        starts or in it is raised (``ApiError`` or anything else) for the caller to send."""
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            raise BadRequest('A subscription\'s payload must be a JSON object with a "query"')
        variables = payload.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise BadRequest('"variables" must be a JSON object')
        try:
            principal = await self.directory.principal(key, int(time.time() * 1000))
        except Unauthenticated as refused:
            log.info("unauthenticated", why=str(refused.why), key_id=refused.key_id)
            raise Unauthorized(self.invalid_key) from None
        document = self.parse(payload["query"])
        errors = validate(self.schema, document)
        if errors:
            yield {"data": None, "errors": [self.format_error(e) for e in errors]}
            return
        operation_name = payload.get("operationName")
        operation = get_operation_ast(document, operation_name)
        if operation is None or operation.operation is not OperationType.SUBSCRIPTION:
            raise BadRequest("Only subscriptions are served over the WebSocket: POST the others")
        if self.streaming >= self.settings.api_max_streams:
            raise Unavailable(
                f"This server streams {self.settings.api_max_streams} subscriptions at once "
                "already: try again in a moment"
            )
        context = SubscriptionContext(principal=principal, store=self.store, settings=self.settings)
        stream = subscribe(
            self.schema,
            document,
            context_value=context,
            variable_values=variables or {},
            operation_name=operation_name,
        )
        if isawaitable(stream):
            stream = await stream
        if isinstance(stream, ExecutionResult):
            yield self._formatted(stream)
            return
        self.streaming += 1
        try:
            async for result in stream:
                yield self._formatted(result)
        finally:
            self.streaming -= 1
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    def _formatted(self, result: ExecutionResult) -> Json:
        formatted: Json = {"data": result.data}
        if result.errors:
            formatted["errors"] = [self.format_error(e) for e in result.errors]
        return formatted

    def failure(self, error: Exception) -> Json:
        """A failure as a subscription's one result."""
        graphql_error = GraphQLError(str(error), original_error=error)
        return {"data": None, "errors": [self.format_error(graphql_error)]}


class _Connection:
    """One socket: its key, its running subscriptions, its send lock."""

    def __init__(self, endpoint: GraphQLSockets, websocket: WebSocket, dialect: Dialect) -> None:
        self.endpoint = endpoint
        self.websocket = websocket
        self.dialect = dialect
        self.key: str | None = None
        self.initialised = False
        self.operations: dict[str, asyncio.Task[None]] = {}
        self.lock = asyncio.Lock()
        self.log = log.bind(protocol=dialect.name)

    async def serve(self) -> None:
        try:
            while True:
                received = await self.websocket.receive()
                if received["type"] == "websocket.disconnect":
                    return
                message = _decoded(received.get("text") or received.get("bytes"))
                if message is None:
                    await self.close(4400, "Invalid message")
                    return
                if not await self.handle(message):
                    return
        except WebSocketDisconnect:
            return
        finally:
            tasks = list(self.operations.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, message: Json) -> bool:
        """Act on one message; False once the socket is closed."""
        kind = message["type"]
        if kind in (self.dialect.start, self.dialect.stop):
            return await self.operation(kind, message.get("id"), message.get("payload"))
        if kind == "connection_init":
            return await self.init(message.get("payload"))
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "connection_terminate":
            return await self.close(1000, "")
        elif kind != "pong":
            return await self.close(4400, f"Unknown message type {kind!r}")
        return True

    async def operation(self, kind: str, op_id: object, payload: object) -> bool:
        if not isinstance(op_id, str) or not op_id:
            return await self.close(4400, f"{kind} needs an id")
        if kind == self.dialect.start:
            return await self.start(op_id, payload)
        return await self.stop(op_id)

    async def init(self, payload: object) -> bool:
        if self.initialised and self.dialect.strict_init:
            return await self.close(4429, "Too many initialisation requests")
        self.key = presented_key(payload)
        if self.key is None and isinstance(payload, dict):
            csrf = payload.get("csrf")
            self.key = console.cookie_credential(
                self.websocket.headers,
                self.websocket.cookies,
                csrf if isinstance(csrf, str) else None,
            )
        self.initialised = True
        await self.send({"type": "connection_ack"})
        return True

    async def start(self, op_id: str, payload: object) -> bool:
        if not self.initialised:
            return await self.close(4401, "Unauthorized")
        if op_id in self.operations:
            return await self.close(4409, f"Subscriber for {op_id} already exists")
        self.operations[op_id] = asyncio.create_task(self.run(op_id, payload))
        return True

    async def stop(self, op_id: str) -> bool:
        task = self.operations.pop(op_id, None)
        if task is not None:
            task.cancel()
            if self.dialect.reply_to_stop:
                await self.send({"type": "complete", "id": op_id})
        return True

    async def run(self, op_id: str, payload: object) -> None:
        """One subscription, to its end (and its ``complete``) or its cancellation."""
        data = self.dialect.data
        try:
            async for result in self.endpoint.results(self.key, payload):
                await self.send({"type": data, "id": op_id, "payload": result})
        except Exception as error:  # noqa: BLE001 - the subscription's one error (format_error logs)
            await self.send({"type": data, "id": op_id, "payload": self.endpoint.failure(error)})
        if self.operations.get(op_id) is asyncio.current_task():
            del self.operations[op_id]
            await self.send({"type": "complete", "id": op_id})

    async def send(self, message: Json) -> None:
        async with self.lock:
            try:
                await self.websocket.send_text(json.dumps(message, separators=(",", ":")))
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.log.debug("ws_send_after_close", type=message.get("type"))

    async def close(self, code: int, reason: str) -> bool:
        """Close the socket; False, for ``handle`` to return."""
        self.log.info("ws_closed", code=code, reason=reason)
        async with self.lock:
            with contextlib.suppress(RuntimeError, OSError):
                await self.websocket.close(code=code, reason=reason)
        return False


def _decoded(text: str | bytes | None) -> Json | None:
    if text is None:
        return None
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) and isinstance(message.get("type"), str) else None
