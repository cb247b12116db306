"""The CLI's and the SDK's way in: the API server, over GraphQL on HTTP.

Finding it, as the real mcli client does (``reference/mapi.md`` section 1):
- the endpoint is ``MOSAICML_API_ENDPOINT``; without it, the local stack's API server (the one
  ``mcli dev up`` started, recorded in its state directory);
- the key is ``MOSAICML_API_KEY`` (set, even empty, it wins), else the ``MOSAICML_API_KEY`` line
  of the mcli config file (``MCLI_CONFIG_PATH``, else ``MCLI_CONFIG_DIR/mcli_config``, default
  ``~/.mosaic/mcli_config``), else the token in ``MOSAICML_ACCESS_TOKEN_FILE`` (sent as
  ``Bearer``); with no endpoint set either, the local stack's admin key.

Every GraphQL error becomes a ``ClientError`` with the server's code and words (shown as mcli
shows them, ``✗ Error 404: Run x not found``); the API not answering is ``Unreachable`` after a
few tries with backoff (503 and connection failures only: the codes the server means as
"retry"). The key is never logged or shown.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from cli.errors import ClientError, Forbidden, NotFound, Refused, Unreachable
from events.tokens import ENDPOINT, TOKEN_FILE

KEY = "MOSAICML_API_KEY"
_TRIES = 4
_CODES: dict[int, type[ClientError]] = {403: Forbidden, 404: NotFound, 409: Refused}
_PROTOCOL = "graphql-transport-ws"


class _Retry(Exception):
    """The server asked to be retried (503), or could not be reached."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def config_path() -> Path:
    if path := os.environ.get("MCLI_CONFIG_PATH"):
        return Path(path)
    directory = os.environ.get("MCLI_CONFIG_DIR") or str(Path.home() / ".mosaic")
    return Path(directory) / "mcli_config"


def configured_key() -> str | None:
    """The key the environment or the mcli config file gives, as the real client reads it."""
    if KEY in os.environ:
        return os.environ[KEY]
    path = config_path()
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        data = None
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"{path}: cannot read the mcli config ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get(KEY), str):
        return str(data[KEY])
    if token_file := os.environ.get(TOKEN_FILE):
        try:
            return "Bearer " + Path(token_file).read_text().strip()
        except OSError as exc:
            raise ClientError(f"{TOKEN_FILE}={token_file}: cannot read it ({exc})") from None
    return None


@dataclass(frozen=True)
class Api:
    """Where the API server is and the key to present (``Authorization`` as is)."""

    endpoint: str
    key: str

    def __repr__(self) -> str:  # never the key
        return f"Api(endpoint={self.endpoint!r})"

    async def call(self, document: str, variables: dict[str, Any] | None = None) -> Any:
        """``data`` of ``document``; ``ClientError`` with the server's code and words."""
        body = {"query": document, "variables": variables or {}}
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_Retry),
                stop=stop_after_attempt(_TRIES),
                wait=wait_exponential(multiplier=0.25, max=2),
                reraise=True,
            ):
                with attempt:
                    return await self._post(body)
        except _Retry as failed:
            raise Unreachable(
                f"cannot reach runplane's API at {self.endpoint} ({failed.message}): start a "
                f"local stack with `mcli dev up`, or set {ENDPOINT} to your deployment's API"
            ) from None

    async def _post(self, body: dict[str, Any]) -> Any:
        headers = {"Authorization": self.key, "x-mosaicml-client": "runplane"}
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=5)) as http:
                response = await http.post(self.endpoint, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise _Retry(str(exc) or type(exc).__name__) from None
        try:
            answer = response.json()
        except ValueError:
            if response.status_code in (502, 503, 504):
                raise _Retry(f"HTTP {response.status_code}") from None
            raise ClientError(
                f"{self.endpoint} answered HTTP {response.status_code} without JSON: "
                f"is {ENDPOINT} a runplane API?"
            ) from None
        errors = answer.get("errors") if isinstance(answer, dict) else None
        if errors:
            raise _error(errors)
        return answer["data"]

    async def subscribe(self, document: str, variables: dict[str, Any]) -> AsyncIterator[Any]:
        """Each result's ``data`` of a subscription, over ``graphql-transport-ws``, until the
        server completes it; ``ClientError`` for the server's error."""
        url = "ws" + self.endpoint.removeprefix("http")
        try:
            async with connect(url, subprotocols=[_PROTOCOL], max_size=2**21) as socket:  # type: ignore[list-item]
                await socket.send(
                    json.dumps({"type": "connection_init", "payload": {"Authorization": self.key}})
                )
                ack = json.loads(await socket.recv())
                if ack.get("type") != "connection_ack":
                    raise ClientError(f"{self.endpoint} did not accept the connection: {ack}")
                payload = {"query": document, "variables": variables}
                await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
                async for raw in socket:
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "ping":
                        await socket.send(json.dumps({"type": "pong"}))
                    elif kind == "next":
                        if message["payload"].get("errors"):
                            raise _stream_error(message["payload"]["errors"])
                        yield message["payload"]["data"]
                    elif kind == "error":
                        raise _stream_error(message["payload"])
                    elif kind == "complete":
                        return
        except (OSError, WebSocketException) as exc:
            raise Unreachable(
                f"cannot reach runplane's API at {url} ({exc or type(exc).__name__}): start a "
                f"local stack with `mcli dev up`, or set {ENDPOINT} to your deployment's API"
            ) from None


def _stream_error(errors: list[dict[str, Any]]) -> ClientError:
    """A stream's error: the server's, or ``Unreachable`` where it asks to be tried again."""
    error = _error(errors)
    return (
        Unreachable(f"runplane's API is busy: {error.message}")
        if isinstance(error, _Retry)
        else error
    )


def _error(errors: list[dict[str, Any]]) -> ClientError | _Retry:
    """The error to raise for a GraphQL ``errors`` list: the highest code's kind."""
    code = max(int((e.get("extensions") or {}).get("code") or 500) for e in errors)
    message = "\n".join(str(e.get("message")) for e in errors)
    if code == 503:
        return _Retry(message)
    error = _CODES.get(code, ClientError)(message)
    error.code = code
    return error


def find_api() -> Api:
    """The API to talk to and the key to present (see the module)."""
    key = configured_key()
    if endpoint := os.environ.get(ENDPOINT):
        if not key:
            raise ClientError(
                f"{ENDPOINT} is set but no API key is: set {KEY}, or ask an admin for one "
                "(`mcli admin keys issue YOUR_NAME`)"
            )
        return Api(endpoint, key)
    # The local stack's, its admin's key: loaded only here, as most commands never need them.
    from cli.stack import LocalStack, state_dir  # noqa: PLC0415
    from cli.stackkey import read_key  # noqa: PLC0415

    stack = LocalStack.find(state_dir())
    if stack is None:
        raise Unreachable(
            f"no runplane to talk to: start a local one with `mcli dev up`, or set {ENDPOINT} "
            f"and {KEY} to your deployment's API"
        )
    key = key or read_key(stack.state_dir)
    if not key:
        raise ClientError("the local stack has no admin key: run `mcli dev up` again to make one")
    return Api(stack.api_url, key)
