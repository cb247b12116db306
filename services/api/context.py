"""What every resolver is given (``Context``), made per request by ``services.api.app``."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from graphql import GraphQLResolveInfo

from events.access import AdminOnly, Principal, administer
from services.api.accounts import Accounts
from services.api.errors import Forbidden
from services.api.runs import RunRequests
from services.api.settings import ApiSettings
from services.api.vault import Vault


@dataclass(frozen=True)
class Context:
    """What every resolver is given: who asks, the read side of the store, the settings, the
    requests on runs, the users and keys, and the users' secrets."""

    principal: Principal
    redis: aioredis.Redis
    settings: ApiSettings
    runs: RunRequests
    accounts: Accounts
    vault: Vault


def context_of(info: GraphQLResolveInfo[Context]) -> Context:
    context = info.context
    assert isinstance(context, Context)
    return context


async def require_admin(context: Context, what: str) -> None:
    """403 (recorded for the audit) unless the caller is an admin (``events.access``)."""
    try:
        administer(context.principal, what)
    except AdminOnly as refused:
        raise await context.runs.refused(
            context.principal, what, "-", Forbidden(str(refused))
        ) from None
