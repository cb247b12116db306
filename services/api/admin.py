"""The resolvers of runplane's own user and key management (``services.api.accounts``):
``users``, ``addUser``, ``issueKey``, ``revokeKey``; an admin's alone (403 for anyone else).
A key is in the answer of the request that made it, and nowhere else."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from graphql import GraphQLResolveInfo

from events.errors import IllegalTransition
from events.identity import IdentityRefused, KeyState, UserState
from events.model import Role
from services.api.accounts import Accounts
from services.api.context import Context, context_of, require_admin
from services.api.errors import BadRequest, Conflict, NotFound

Json = dict[str, Any]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _key(key: KeyState) -> Json:
    return {
        "keyId": key.key_id,
        "issuedAt": _iso(key.issued_at),
        "issuedBy": key.issued_by,
        "expiresAt": _iso(key.expires_at),
        "revokedAt": _iso(key.revoked_at),
        "revokedBy": key.revoked_by,
    }


def _user(user: UserState) -> Json:
    return {
        "name": user.name,
        "role": user.role,
        "addedAt": _iso(user.added_at),
        "addedBy": user.added_by,
        "keys": [_key(k) for k in user.keys.values()],
    }


def _issued(user: UserState, presented: str) -> Json:
    key_id = presented.removeprefix("rpk_").partition("_")[0]
    return {"user": _user(user), "keyId": key_id, "key": presented}


def _expiry(seconds: int | None) -> int | None:
    if seconds is None:
        return None
    if seconds <= 0:
        raise BadRequest(f"expiresInSeconds: {seconds} is not positive")
    return _now_ms() + seconds * 1000


async def _admin(info: GraphQLResolveInfo[Context], what: str) -> tuple[Context, Accounts]:
    context = context_of(info)
    await require_admin(context, what)
    return context, context.accounts


def _refused(error: IdentityRefused) -> NotFound | Conflict:
    return NotFound(str(error)) if error.missing else Conflict(str(error))


async def list_users(_: object, info: GraphQLResolveInfo[Context], **__: Any) -> list[Json]:
    _, accounts = await _admin(info, "list users")
    return [_user(user) for user in await accounts.users()]


async def add_user_(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> Json:
    context, accounts = await _admin(info, "add users")
    role: Role = "admin" if args.get("admin") else "user"
    try:
        user, key = await accounts.add(
            context.principal.name,
            args["name"],
            role,
            expires_at=_expiry(args.get("expiresInSeconds")),
        )
    except IdentityRefused as refused:
        raise _refused(refused) from None
    except IllegalTransition as bad:  # the rules refuse the name (events.identity)
        raise BadRequest(f"user {args['name']}: {bad.why}") from None
    return _issued(user, key)


async def issue_key_(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> Json:
    context, accounts = await _admin(info, "issue keys")
    try:
        user, key = await accounts.issue(
            context.principal.name, args["user"], expires_at=_expiry(args.get("expiresInSeconds"))
        )
    except IdentityRefused as refused:
        raise _refused(refused) from None
    return _issued(user, key)


async def revoke_key_(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> Json:
    context, accounts = await _admin(info, "revoke keys")
    try:
        user, key = await accounts.revoke(context.principal.name, args["keyId"])
    except IdentityRefused as refused:
        raise _refused(refused) from None
    return {"user": _user(user), "key": _key(key)}


QUERIES: dict[str, Callable[..., Any]] = {"users": list_users}
MUTATIONS: dict[str, Callable[..., Any]] = {
    "addUser": add_user_,
    "issueKey": issue_key_,
    "revokeKey": revoke_key_,
}
