"""What the local stack's server refused its services: every end-to-end stack is checked for it
before it goes down, so a command or key a service needs and its ACL rule lacks
(``services.core.acl``) fails the tests that met it, with the user, the command and the key."""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.exceptions import RedisError

from cli.stack import LocalStack
from services.core.acl import OPERATOR
from services.core.settings import login

_REFUSALS = ("command", "key", "channel")  # not "auth": the tests of passwords cause those


def denials(stack: LocalStack) -> list[str]:
    """One line per refusal in the server's ACL LOG (none if the server does not answer)."""
    settings = stack.operator_settings()
    client = redis.Redis.from_url(settings.redis_url, **login(settings.redis_auth()))
    try:
        entries = cast(list[dict[str, Any]], client.acl_log(count=1000))
    except (RedisError, OSError):
        return []
    finally:
        client.close()
    return [
        f"{entry['username']}: no {entry['reason']} {entry['object']} "
        f"(in {entry['client-info']['cmd']}, {entry['count']}x)"
        for entry in entries
        if entry["reason"] in _REFUSALS and entry["username"] != OPERATOR
    ]
