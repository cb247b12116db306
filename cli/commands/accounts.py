"""``mcli admin users ...`` and ``mcli admin keys ...``: users and API keys, through the API;
``mcli admin bootstrap NAME``: a deployment's first admin, by its operator, on the log itself;
``mcli admin secrets rotate-key``: the operator's key rotation of the secrets' keyring
(``cli.rotation``), on the store and the keyring file themselves.

A new key is printed alone on stdout, so ``KEY=$(mcli admin users add alice)`` keeps it and
nothing else; every message goes to stderr. The server decides who may (admins only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from cli.api import Api
from cli.commands import archive, nodes, report
from cli.commands.common import echo, with_api
from cli.criteria import duration_s
from cli.errors import ClientError, Refused
from cli.render import make_console, plain_table, when
from cli.rotation import Rotated, rotate
from cli.stack import LocalStack, operator_settings, state_dir
from cli.stackfiles import secrets_dir
from cli.stackkey import first_admin
from events.errors import IllegalTransition
from events.identity import IdentityRefused
from services.core import sealing
from services.core.store import EventStore

KEYRING_VARIABLE = "RUNPLANE_SECRETS_KEYRING_FILE"

_ACCOUNT = (
    "name role addedAt addedBy keys { keyId issuedAt issuedBy expiresAt revokedAt revokedBy }"
)
ADD = f"""
mutation AddUser($name: String!, $admin: Boolean, $expiresInSeconds: Int) {{
  addUser(name: $name, admin: $admin, expiresInSeconds: $expiresInSeconds) {{
    keyId key user {{ {_ACCOUNT} }}
  }}
}}"""
ISSUE = f"""
mutation IssueKey($user: String!, $expiresInSeconds: Int) {{
  issueKey(user: $user, expiresInSeconds: $expiresInSeconds) {{ keyId key user {{ {_ACCOUNT} }} }}
}}"""
REVOKE = f"""
mutation RevokeKey($keyId: String!) {{
  revokeKey(keyId: $keyId) {{ key {{ keyId revokedAt }} user {{ {_ACCOUNT} }} }}
}}"""
USERS = f"query Users {{ users {{ {_ACCOUNT} }} }}"


def span(text: str) -> int:
    try:
        return int(duration_s(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: Any) -> None:
    admin = subparsers.add_parser("admin", help="users, API keys and nodes (admins only)")
    kinds = admin.add_subparsers(dest="kind", metavar="WHAT", required=True)
    nodes.register(kinds)
    archive.register(kinds)
    report.register(kinds)

    first = kinds.add_parser(
        "bootstrap",
        help="an operator's command: a deployment's first admin, on the log itself; prints "
        "their key (alone on stdout)",
    )
    first.add_argument("name", help="the admin's name (e.g. an email)")
    first.set_defaults(handler=bootstrap)

    users = kinds.add_parser("users", help="add and list users").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    add = users.add_parser("add", help="add a user; prints their first key (alone on stdout)")
    add.add_argument("name", help="the user's name, as their runs will show it (e.g. an email)")
    add.add_argument("--admin", action="store_true", help="make them an admin")
    add.add_argument("--expires", type=span, metavar="SPAN", help="the key expires (30d, 12h)")
    add.set_defaults(handler=with_api(add_user))
    listed = users.add_parser("list", help="every user, their role and keys")
    listed.set_defaults(handler=with_api(list_users))

    keys = kinds.add_parser("keys", help="issue and revoke API keys").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    issue = keys.add_parser("issue", help="issue a user another key (alone on stdout)")
    issue.add_argument("name", help="the user")
    issue.add_argument("--expires", type=span, metavar="SPAN", help="the key expires (30d, 12h)")
    issue.set_defaults(handler=with_api(issue_key))
    revoke = keys.add_parser("revoke", help="revoke a key at once, by its id")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the id (rpk_<KEY_ID>_...), not the key")
    revoke.set_defaults(handler=with_api(revoke_key))

    vault = kinds.add_parser("secrets", help="the keyring that seals users' secrets")
    actions = vault.add_subparsers(dest="action", metavar="ACTION", required=True)
    rotation = actions.add_parser(
        "rotate-key",
        help="an operator's command: add a key to the keyring, seal every secret under it, "
        "drop the keys no secret uses (safe to run again if cut short)",
    )
    rotation.add_argument(
        "--keyring",
        type=Path,
        metavar="PATH",
        help=f"the keyring file (default: ${KEYRING_VARIABLE}, else the local stack's)",
    )
    rotation.set_defaults(handler=rotate_key)


def bootstrap(args: argparse.Namespace) -> int:
    """The first admin of a deployment, added on the log as its operator (no admin exists yet
    to ask the API): ``RUNPLANE_REDIS_URL`` and the operator's login, or the local stack's."""

    try:
        key = asyncio.run(first_admin(operator_settings(), args.name))
    except IdentityRefused as refused:
        raise Refused(f"{refused}: issue them a key with `mcli admin keys issue`") from None
    except IllegalTransition as bad:
        raise ClientError(f"user {args.name}: {bad.why}") from None
    echo(f"✔ Added admin {args.name}; their key (shown once) is on stdout", err=True)
    echo(key)
    return 0


def keyring_file(given: Path | None) -> Path:
    """The keyring to rotate: ``--keyring``, else ``RUNPLANE_SECRETS_KEYRING_FILE``, else the
    local stack's."""
    if given is not None:
        return given
    if named := os.environ.get(KEYRING_VARIABLE):
        return Path(named)
    stack = LocalStack.find(state_dir())
    if stack is None:
        raise ClientError(
            f"which keyring? give --keyring PATH or set {KEYRING_VARIABLE} (the file the API "
            "server and the node-agents read), or start a local stack with `mcli dev up`"
        )
    return sealing.keyring_path(secrets_dir(stack.state_dir))


def rotate_key(args: argparse.Namespace) -> int:
    """An operator's command: on the store (``RUNPLANE_REDIS_URL`` and the operator's login, or
    the local stack's) and on the keyring file."""
    path = keyring_file(args.keyring)
    sealing.load_keyring(path)  # a keyring that cannot be read: said before anything is done
    settings = operator_settings()

    async def run() -> Rotated:
        store = EventStore.from_settings(settings)
        try:
            return await rotate(store, path)
        finally:
            await store.close()

    with make_console().status(f"Sealing every secret under a new key of {path}..."):
        rotated = asyncio.run(run())
    dropped = ", ".join(rotated.dropped) or "none"
    echo(
        f"✔ Rotated {path}: new key {rotated.new_key}; {rotated.resealed} secret(s) sealed "
        f"again, {rotated.values} stored; keys dropped: {dropped}"
    )
    if rotated.removed:
        echo(f"  {rotated.removed} value(s) of deleted secrets removed")
    for refused in rotated.refused:
        echo(f"⚠ {refused} does not open (changed or damaged): left as it is", err=True)
    return 0


async def add_user(args: argparse.Namespace, api: Api) -> int:
    variables = {"name": args.name, "admin": args.admin, "expiresInSeconds": args.expires}
    issued = (await api.call(ADD, variables))["addUser"]
    role = issued["user"]["role"]
    echo(f"✔ Added {role} {args.name} with key {issued['keyId']} (shown once)", err=True)
    echo(issued["key"])
    return 0


async def issue_key(args: argparse.Namespace, api: Api) -> int:
    variables = {"user": args.name, "expiresInSeconds": args.expires}
    issued = (await api.call(ISSUE, variables))["issueKey"]
    echo(f"✔ Issued key {issued['keyId']} to {args.name} (shown once)", err=True)
    echo(issued["key"])
    return 0


async def revoke_key(args: argparse.Namespace, api: Api) -> int:
    key_id = args.key_id.removeprefix("rpk_").partition("_")[0]  # a pasted key: its id only
    revoked = (await api.call(REVOKE, {"keyId": key_id}))["revokeKey"]
    echo(f"✔ Revoked key {key_id} of {revoked['user']['name']}", err=True)
    return 0


async def list_users(_: argparse.Namespace, api: Api) -> int:
    users = (await api.call(USERS))["users"]
    table = plain_table("NAME", "ROLE", "KEYS", "ADDED", "ADDED BY")
    for user in users:
        keys = [_key(k) for k in user["keys"]]
        table.add_row(
            user["name"],
            user["role"],
            ", ".join(keys) or "-",
            when(datetime.fromisoformat(user["addedAt"])),
            user["addedBy"],
        )
    make_console().print(table)
    return 0


def _key(key: dict[str, Any]) -> str:
    if key["revokedAt"]:
        return f"{key['keyId']} (revoked)"
    if key["expiresAt"]:
        return f"{key['keyId']} (expires {key['expiresAt'][:16]})"
    return str(key["keyId"])
