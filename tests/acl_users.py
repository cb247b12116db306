"""A service's ACL user (``services.core.acl``) on the session's server, for the tests that run
a service against it: the service logs in as its user, and a command or key its rule lacks is
a NOPERM there and a line in the server's ACL LOG, which ``refused`` reads back.

The test's own client stays the ``default`` user, with every right (it seeds and inspects)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, cast

import redis

from services.core.acl import RULES
from services.core.passwords import password_file
from services.core.private import write_private

_REFUSALS = ("command", "key", "channel")


def login_as(redis_url: str, user: str, directory: Path) -> dict[str, str]:
    """Make ``user`` on the server at ``redis_url`` with its rule and a new password, kept in a
    0600 file under ``directory``; the variables that log a process in as it."""
    password = secrets.token_urlsafe(16)
    directory.mkdir(parents=True, exist_ok=True)
    path = password_file(directory, user)
    write_private(path, password)
    with redis.Redis.from_url(redis_url) as client:
        client.execute_command("ACL", "SETUSER", user, "on", f">{password}", *RULES[user].words())
    return {"RUNPLANE_REDIS_USERNAME": user, "RUNPLANE_REDIS_PASSWORD_FILE": str(path)}


def refused(redis_url: str, user: str, since_ms: int = 0) -> list[str]:
    """What the server refused ``user`` (since ``since_ms``, its clock): one line each."""
    with redis.Redis.from_url(redis_url) as client:
        entries = cast(list[dict[str, Any]], client.acl_log(count=1000))
    return [
        f"{entry['username']}: no {entry['reason']} {entry['object']} "
        f"(in {entry['client-info']['cmd']}, {entry['count']}x)"
        for entry in entries
        if entry["reason"] in _REFUSALS
        and entry["username"] == user
        and int(entry["timestamp-last-updated"]) >= since_ms
    ]


def server_ms(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000
