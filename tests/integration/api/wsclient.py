"""A raw WebSocket client of the API's subscriptions, speaking either subprotocol as the real
client does (``reference/mapi.md`` section 3), with a deadline on every wait."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

Json = dict[str, Any]
OFFERED = ("graphql-ws", "graphql-transport-ws")  # what the real client offers, in its order
WAIT_S = 30.0

LOGS = """subscription Subscription($getRunLogsInput: GetRunLogsInput!) {
  getRunLogsV2(getRunLogsInput: $getRunLogsInput) { chunk endOffset }
}"""
WATCH = """subscription Subscription($watchRunStatusInput: WatchRunStatusInput!) {
  watchRunStatus(watchRunStatusInput: $watchRunStatusInput)
}"""


class Socket:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.protocol = connection.subprotocol or "graphql-ws"
        self.apollo = self.protocol == "graphql-ws"

    async def send(self, message: Json) -> None:
        await self.connection.send(json.dumps(message))

    async def receive(self) -> Json:
        async with asyncio.timeout(WAIT_S):
            message: Json = json.loads(await self.connection.recv())
            return message

    async def subscribe(self, op_id: str, query: str, variables: Json) -> None:
        kind = "start" if self.apollo else "subscribe"
        payload = {"query": query, "variables": variables}
        await self.send({"id": op_id, "type": kind, "payload": payload})

    async def stop(self, op_id: str) -> None:
        await self.send({"id": op_id, "type": "stop" if self.apollo else "complete"})

    async def next_data(self, op_id: str) -> Json:
        """The data of ``op_id``'s next result (which must come next)."""
        message = await self.receive()
        assert message.get("id") == op_id, message
        assert message["type"] == ("data" if self.apollo else "next"), message
        data: Json = message["payload"]["data"]
        return data

    async def results(self, op_id: str) -> tuple[list[Json], list[Json]]:
        """Every result's data and every error of ``op_id``, up to its ``complete``."""
        data: list[Json] = []
        errors: list[Json] = []
        while True:
            message = await self.receive()
            assert message.get("id") == op_id, message
            if message["type"] == "complete":
                return data, errors
            assert message["type"] == ("data" if self.apollo else "next"), message
            payload = message["payload"]
            errors += payload.get("errors") or []
            if payload.get("data") is not None:
                data.append(payload["data"])

    async def logs(self, op_id: str, **variables: Any) -> tuple[bytes, list[int], list[Json]]:
        """A getRunLogsV2 to its end: the bytes, each chunk's endOffset, the errors."""
        await self.subscribe(op_id, LOGS, {"getRunLogsInput": variables})
        return await self.logs_results(op_id)

    async def logs_results(self, op_id: str) -> tuple[bytes, list[int], list[Json]]:
        data, errors = await self.results(op_id)
        chunks = [d["getRunLogsV2"] for d in data]
        raw = b"".join(base64.b64decode(c["chunk"]) for c in chunks)
        return raw, [c["endOffset"] for c in chunks], errors


@asynccontextmanager
async def socket(
    url: str, key: str | None, offered: tuple[str, ...] = OFFERED
) -> AsyncIterator[Socket]:
    """A connection to the API at ``url`` (http), initialised with ``key`` and acknowledged."""
    async with asyncio.timeout(WAIT_S):
        connection = await connect(
            url.replace("http://", "ws://"),
            subprotocols=list(offered),  # type: ignore[arg-type]
        )
    try:
        opened = Socket(connection)
        payload = {} if key is None else {"Authorization": key}
        await opened.send({"type": "connection_init", "payload": payload})
        assert await opened.receive() == {"type": "connection_ack"}
        yield opened
    finally:
        await connection.close()
