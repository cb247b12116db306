"""The web console's edge: its page and assets, and its sessions, on the API server's origin.

The console is a client of ``/graphql`` like any other (no second API); what is here is how a
browser holds a key without a script ever seeing one:

- ``POST /console/session`` with ``{"key": ...}``: a user's API key (never a run's token,
  ``events.access.may_open_session``) is exchanged for a *session key*: a key of the same user,
  issued by themselves, that expires after ``api_console_session_seconds``. It is an ordinary
  key in the log (only its hash is kept, the audit shows who signed in when) and it travels only
  in the ``runplane_session`` cookie: HttpOnly, SameSite=Strict, Secure over https. A wrong key
  is 401 ``Invalid API key``, like any other request with one.
- ``GET /console/session``: who the cookie is, and the CSRF token of the session (``user``
  null: not signed in).
- ``DELETE /console/session``: signs out: the session key is revoked and the cookie cleared.

Requests carried by the cookie (``/graphql`` over POST and WebSocket, the sign-out) must also
carry the session's CSRF token (``x-runplane-csrf``, or ``csrf`` in the WebSocket's
``connection_init`` payload), and, when the browser names its ``Origin``, come from this
server's origin. The token is a one-way digest of the session key, so it gives away nothing,
and a page of another origin can neither read it nor make it. A request with an
``Authorization`` header is judged by that header alone; a cookie without a valid token counts
as no credential at all (401).

Every console response forbids framing and inline code (``Content-Security-Policy``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from events.access import Principal, may_open_session
from events.identity import IdentityRefused, Unauthenticated, parse_key
from events.status import RunStatus
from services.api.accounts import Accounts
from services.api.settings import ApiSettings
from services.api.users import Directory

WEB = Path(__file__).with_name("web")
SESSION_COOKIE = "runplane_session"
CSRF_HEADER = "x-runplane-csrf"
INVALID_KEY = "Invalid API key"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
        "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
log = structlog.get_logger("services.api")


def csrf_token(session_key: str) -> str:
    """The CSRF token of a session: a digest of its key (one way: it reveals nothing of it)."""
    return hashlib.sha256(b"runplane-console-csrf\0" + session_key.encode()).hexdigest()[:40]


def same_origin(headers: Mapping[str, str]) -> bool:
    """False when the browser says the request comes from another origin than this server."""
    origin = headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-origin request: the CSRF token decides
    return urlsplit(origin).netloc == headers.get("host", "")


def cookie_credential(
    headers: Mapping[str, str], cookies: Mapping[str, str], csrf: str | None
) -> str | None:
    """The session key of the cookie when ``csrf`` is its token and the origin is this one."""
    key = cookies.get(SESSION_COOKIE)
    if not key or not csrf or not same_origin(headers):
        return None
    if not hmac.compare_digest(csrf_token(key), csrf):
        return None
    return key


def presented(request: Request, header_credential: str | None) -> str | None:
    """What a ``/graphql`` POST authenticates with: its ``Authorization`` header, else the
    console's cookie with its CSRF token."""
    if header_credential is not None:
        return header_credential
    return cookie_credential(request.headers, request.cookies, request.headers.get(CSRF_HEADER))


class _Secured:
    """An ASGI app whose every HTTP response carries ``SECURITY_HEADERS``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = [*message.get("headers", []), *extra]  # type: ignore[misc]
            await send(message)

        await self.app(scope, receive, sending)  # type: ignore[arg-type]


class Console:
    def __init__(self, settings: ApiSettings, directory: Directory, accounts: Accounts) -> None:
        self.settings = settings
        self.directory = directory
        self.accounts = accounts

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.page, methods=["GET", "HEAD"]),
            Route("/console/session", self.sign_in, methods=["POST"]),
            Route("/console/session", self.session, methods=["GET"]),
            Route("/console/session", self.sign_out, methods=["DELETE"]),
            Mount("/console/assets", app=_Secured(StaticFiles(directory=WEB / "assets"))),
        ]

    async def page(self, _: Request) -> Response:
        return FileResponse(WEB / "index.html", headers=SECURITY_HEADERS)

    async def sign_in(self, request: Request) -> Response:
        try:
            principal, session_key = await self._open(request)
        except _Refused as refused:
            return _refusal(refused.code, refused.message)
        log.info("console_signed_in", user=principal.name)
        response = JSONResponse(_who(principal.name, principal.role, session_key))
        response.set_cookie(
            SESSION_COOKIE,
            session_key,
            max_age=self.settings.api_console_session_seconds,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def _open(self, request: Request) -> tuple[Principal, str]:
        """Who signs in, and their new session key; ``_Refused`` says why not."""
        if not same_origin(request.headers):
            raise _Refused(HTTPStatus.FORBIDDEN, "Sign in from the console's own page")
        try:
            body = await request.json()
        except ValueError:
            body = None
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key.strip():
            raise _Refused(HTTPStatus.BAD_REQUEST, 'Send {"key": "<your API key>"} as JSON')
        now = _now_ms()
        try:
            principal = await self.directory.principal(key.strip(), now)
        except Unauthenticated as refused:
            log.info("console_sign_in_refused", why=str(refused.why), key_id=refused.key_id)
            raise _Refused(HTTPStatus.UNAUTHORIZED, INVALID_KEY) from None
        if not may_open_session(principal):
            raise _Refused(HTTPStatus.FORBIDDEN, "A run's token cannot sign in to the console")
        expires_at = now + self.settings.api_console_session_seconds * 1000
        try:
            _, session_key = await self.accounts.issue(
                principal.name, principal.name, expires_at=expires_at
            )
        except IdentityRefused as refused:
            raise _Refused(HTTPStatus.CONFLICT, str(refused)) from None
        return principal, session_key

    async def session(self, request: Request) -> Response:
        key = request.cookies.get(SESSION_COOKIE)
        try:
            principal = await self.directory.principal(key, _now_ms())
        except Unauthenticated:
            return JSONResponse({"user": None}, headers=SECURITY_HEADERS)  # the sign-in page
        assert key is not None
        return JSONResponse(_who(principal.name, principal.role, key))

    async def sign_out(self, request: Request) -> Response:
        key = cookie_credential(request.headers, request.cookies, request.headers.get(CSRF_HEADER))
        parsed = parse_key(key) if key is not None else None
        if key is None or parsed is None:
            return _refusal(HTTPStatus.UNAUTHORIZED, "Not signed in")
        try:
            principal = await self.directory.principal(key, _now_ms())
            await self.accounts.revoke(principal.name, parsed[0])
        except (Unauthenticated, IdentityRefused):
            pass  # revoked or expired already: signing out clears the cookie all the same
        response = JSONResponse({"signedOut": True})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response


class _Refused(Exception):
    def __init__(self, code: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: The statuses as the pages group them (``events.status``): the one place they are told.
STATUSES = [
    {
        "name": status.value,
        "terminal": status.is_terminal(),
        "holdsGpus": status.is_active(),
        "waiting": status.is_waiting(),
    }
    for status in RunStatus
    if status is not RunStatus.UNKNOWN
]


def _who(user: str, role: str, key: str) -> dict[str, Any]:
    """What the page is told of its session: who, their role, the CSRF token, the statuses."""
    return {"user": user, "role": role, "csrf": csrf_token(key), "statuses": STATUSES}


def _refusal(code: HTTPStatus, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=int(code), headers=SECURITY_HEADERS)


def _now_ms() -> int:
    return int(time.time() * 1000)
