"""A user's secrets: what each type holds, the rules its fields keep, and the decisions on them.

A secret belongs to one user and is named uniquely among theirs (``NAME``: a DNS subdomain, as
mcli requires). Its **type** (``SecretType``) says what it holds and how a run gets it
(``docs/secrets.md``); its fields are of two kinds:
- ``metadata``: where it goes in a run (an env secret's variable ``key``, a file's
  ``mountPath``, an s3 secret's ``mountDirectory``): not secret, shown by ``getSecrets``;
- ``value``: what is secret (the variable's value, the file's text, a registry's username and
  password, ...): sealed before it is stored (``services.core.sealing``), never shown, never in
  an event, a log line or an answer.
Field names are MAPI's (``docs/mcli-secrets.md``), so the API passes them through.

The log keeps only that a secret was created or deleted, with its name and type
(``secret.created``, ``secret.deleted`` in the owner's aggregate ``user:<name>``): ``apply``
folds them into the user's state (``events.identity``), refusing a second secret of one name or
the deletion of one that is not there. The ``secret.created`` event's id is the secret's id: its
sealed value records it, so a value left by a secret deleted meanwhile is told from the live one.

Pure: no IO, no clock, no randomness; ids and times come from the caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, NoReturn, get_args

import msgspec

from events.errors import EventsError, IllegalTransition
from events.model import SecretCreated, SecretDeleted, SecretType, tag_of

SECRET_TYPES: Final[tuple[SecretType, ...]] = get_args(SecretType)
#: mcli's name rule for secrets (``validate_secret_name``): a DNS subdomain.
NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
_ENV_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HF_KEY: Final = "HF_TOKEN"
#: Where runplane keeps its own files in a rank (``services.node_agent``: the workspace, the
#: parameters, the run token, git's credentials): no secret may be mounted there.
RESERVED_PATHS: Final = ("/runplane", "/etc/runplane", "/var/run/runplane")
#: The bytes one secret's value fields may hold together (a PEM key, a credentials file).
MAX_VALUE_BYTES: Final = 128 * 1024

#: Each type's fields: metadata (not secret) and value fields, required or optional.
FILE_TYPES: Final[frozenset[SecretType]] = frozenset({"mounted", "ssh", "git", "gcp"})
ENV_TYPES: Final[frozenset[SecretType]] = frozenset({"env", "hf"})
DIRECTORY_TYPES: Final[frozenset[SecretType]] = frozenset({"s3"})


class Shape(msgspec.Struct, frozen=True, kw_only=True):
    metadata: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    #: Value fields that may be empty (an env secret's value; a mounted file's text).
    may_be_empty: tuple[str, ...] = ()


SHAPES: Final[dict[SecretType, Shape]] = {
    "docker": Shape(required=("server", "username", "password"), optional=("email",)),
    "env": Shape(metadata=("key",), required=("value",), may_be_empty=("value",)),
    "hf": Shape(metadata=("key",), required=("value",)),
    "mounted": Shape(metadata=("mountPath",), required=("value",), may_be_empty=("value",)),
    "ssh": Shape(metadata=("mountPath",), required=("value",)),
    "git": Shape(metadata=("mountPath",), required=("value",)),
    "gcp": Shape(metadata=("mountPath",), required=("value",)),
    "s3": Shape(
        metadata=("mountDirectory",), required=("credentials", "config"), optional=("profile",)
    ),
}


class Secret(msgspec.Struct, frozen=True, kw_only=True):
    """A secret as its owner gives it. ``repr`` leaves the value out, so a traceback or a log
    line that shows one shows no value."""

    name: str
    secret_type: SecretType
    metadata: dict[str, str]
    value: dict[str, str]

    def __repr__(self) -> str:
        return (
            f"Secret(name={self.name!r}, secret_type={self.secret_type!r}, "
            f"metadata={self.metadata!r}, value=<{len(self.value)} fields hidden>)"
        )

    __str__ = __repr__


class SecretState(msgspec.Struct, kw_only=True):
    """A secret as its owner's history has it: no value, no metadata (they are not logged)."""

    name: str
    secret_type: SecretType
    secret_id: str  # the id of the ``secret.created`` event
    created_at: int
    created_by: str


class BadSecret(EventsError):
    """A field of a secret breaks its type's rules; ``field`` names it (``value.password``,
    ``metadata.mountPath``, ``name``) and the message says what to give. Never quotes a value."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


class SecretRefused(EventsError):
    """A request on secrets that does not fit the owner's secrets: a name taken (the API answers
    409), an unknown name (``missing``: 404)."""

    def __init__(self, owner: str, name: str, why: str, *, missing: bool = False) -> None:
        super().__init__(f"secret {name}: {why}")
        self.owner = owner
        self.name = name
        self.why = why
        self.missing = missing


# --- the fold -------------------------------------------------------------------------------


def apply(secrets: dict[str, SecretState], event: SecretCreated | SecretDeleted) -> None:
    """``secrets`` (by name) after ``event``, in place; ``IllegalTransition`` if the rules
    forbid it."""
    match event:
        case SecretCreated():
            if NAME.fullmatch(event.name) is None:
                _refuse(event, name_rule())
            if event.name in secrets:
                _refuse(event, f"user {event.user} has a secret {event.name} already")
            secrets[event.name] = SecretState(
                name=event.name,
                secret_type=event.secret_type,
                secret_id=event.id,
                created_at=event.time,
                created_by=event.actor,
            )
        case SecretDeleted():
            known = secrets.get(event.name)
            if known is None:
                _refuse(event, f"user {event.user} has no secret {event.name}")
            if known.secret_type != event.secret_type:
                _refuse(event, f"secret {event.name} is a {known.secret_type} secret")
            del secrets[event.name]


def _refuse(event: SecretCreated | SecretDeleted, why: str) -> NoReturn:
    raise IllegalTransition(event.aggregate, tag_of(type(event)), why)


# --- the rules of each type ---------------------------------------------------------------------


def name_rule() -> str:
    return (
        "a secret's name is 1 to 253 lower-case letters, digits, '-' or '.', starting and ending "
        "with a letter or digit"
    )


def check(secret: Secret) -> None:
    """``BadSecret`` naming the first field that breaks ``secret``'s type's rules."""
    if NAME.fullmatch(secret.name) is None:
        raise BadSecret("name", name_rule())
    shape = SHAPES[secret.secret_type]
    for group, allowed in (
        ("metadata", shape.metadata),
        ("value", (*shape.required, *shape.optional)),
    ):
        given: Mapping[str, str] = getattr(secret, group)
        for field in sorted(set(given) - set(allowed)):
            expected = ", ".join(allowed) or "nothing"
            raise BadSecret(
                f"{group}.{field}", f"a {secret.secret_type} secret has no such field ({expected})"
            )
    for field in shape.metadata:
        if not secret.metadata.get(field):
            raise BadSecret(f"metadata.{field}", "is required")
    for field in shape.required:
        if field not in secret.value or (
            not secret.value[field] and field not in shape.may_be_empty
        ):
            raise BadSecret(f"value.{field}", "is required and may not be empty")
    size = sum(len(text.encode()) for text in secret.value.values())
    if size > MAX_VALUE_BYTES:
        raise BadSecret("value", f"is {size} bytes; a secret holds at most {MAX_VALUE_BYTES}")
    _check_type(secret)


def _check_type(secret: Secret) -> None:
    kind = secret.secret_type
    if kind in ENV_TYPES:
        key = secret.metadata["key"]
        if _ENV_KEY.fullmatch(key) is None:
            raise BadSecret(
                "metadata.key", "an environment variable's name is [A-Za-z_][A-Za-z0-9_]*"
            )
        if (kind == "hf") != (key == HF_KEY):
            raise BadSecret("metadata.key", f"a hf secret is the variable {HF_KEY}, and only it")
    if kind in FILE_TYPES:
        check_path("metadata.mountPath", secret.metadata["mountPath"])
    if kind in DIRECTORY_TYPES:
        check_path("metadata.mountDirectory", secret.metadata["mountDirectory"])
    if kind == "docker" and any(c.isspace() for c in secret.value["server"]):
        raise BadSecret("value.server", "a registry's address has no spaces")


def check_path(field: str, path: str) -> None:
    """An absolute POSIX path, normalised: no ``.``/``..`` parts, no empty parts, not ``/``."""
    parts = path.split("/")
    if (
        not path.startswith("/")
        or path == "/"
        or "\0" in path
        or any(part in ("", ".", "..") for part in parts[1:])
    ):
        raise BadSecret(
            field, "must be an absolute path like /secrets/NAME, without '.', '..' or '//'"
        )
    for reserved in RESERVED_PATHS:
        if path == reserved or path.startswith(reserved + "/") or reserved.startswith(path + "/"):
            raise BadSecret(field, f"{reserved} is runplane's own in a run: mount elsewhere")


def destination(secret_type: SecretType, metadata: Mapping[str, str]) -> str | None:
    """Where a secret lands in a run, that two secrets may not share: an env secret's variable
    (``env:KEY``), a file's or a directory's path (``path:/...``); None for docker (or for
    metadata that lacks the field)."""
    field = (
        "key"
        if secret_type in ENV_TYPES
        else "mountPath"
        if secret_type in FILE_TYPES
        else "mountDirectory"
        if secret_type in DIRECTORY_TYPES
        else None
    )
    if field is None or not metadata.get(field):
        return None
    return f"{'env' if field == 'key' else 'path'}:{metadata[field]}"


def overlaps(one: str, other: str) -> bool:
    """Whether two destinations collide: the same variable, or one path inside the other."""
    if one.startswith("env:") or other.startswith("env:"):
        return one == other
    a, b = one.removeprefix("path:"), other.removeprefix("path:")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


# --- decisions ------------------------------------------------------------------------------------


def create(
    owner: str,
    secrets: Mapping[str, SecretState],
    secret: Secret,
    actor: str,
    event_id: str,
    *,
    taken: Mapping[str, str] | None = None,
) -> SecretCreated:
    """The event that creates ``secret`` for ``owner``: ``BadSecret`` for a field against its
    type's rules, ``SecretRefused`` for a name ``owner`` holds already, or a destination
    (``destination``) another of their secrets holds (``taken``: each live secret's destination
    by name)."""
    check(secret)
    if secret.name in secrets:
        raise SecretRefused(
            owner, secret.name, "a secret of this name exists; delete it first to replace it"
        )
    mine = destination(secret.secret_type, secret.metadata)
    for name, theirs in sorted((taken or {}).items()):
        if mine is not None and name in secrets and overlaps(mine, theirs):
            where = theirs.partition(":")[2]
            raise SecretRefused(owner, secret.name, f"secret {name} is at {where} already")
    return SecretCreated(
        id=event_id, actor=actor, user=owner, name=secret.name, secret_type=secret.secret_type
    )


def delete(
    owner: str, secrets: Mapping[str, SecretState], name: str, actor: str, event_id: str
) -> SecretDeleted:
    """The event that deletes ``owner``'s secret ``name``; ``SecretRefused`` (missing) if they
    have none of that name."""
    known = secrets.get(name)
    if known is None:
        raise SecretRefused(owner, name, "no such secret", missing=True)
    return SecretDeleted(
        id=event_id, actor=actor, user=owner, name=name, secret_type=known.secret_type
    )
