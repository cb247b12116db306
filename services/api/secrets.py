"""The resolvers of users' secrets: ``createSecret``, ``getSecrets`` and ``deleteSecrets``, as
the real client 0.8.3 sends them (``docs/mcli-secrets.md``), over ``services.api.vault``.

- Whose secrets: the caller's, unless ``entity`` names one user (``userIds`` or ``emails``: a
  user's id is their name), as mcli's admin mode does; who may is ``events.access``
  (``may_manage_secrets``: an admin lists and deletes another's, creates for no one else; a run's
  token manages none). A refusal to act on another user's is recorded for the audit.
- ``createSecretData`` holds one key per type (``envVarSecret``, ``mountedSecret``, ...); its
  fields are checked by the type's rules (``events.secrets``) and a bad one answers 400 naming
  it (``createSecretData.dockerRegistrySecret.value.password: ...``). A name taken: 409.
- ``getSecrets`` filters by ``name`` (``in``: exact names or ``fnmatch`` globs; ``equals``) and
  ``type`` (``in``: MAPI's type names); ``deleteSecrets`` takes exact names, all known or none
  deleted (404), and refuses an empty filter rather than delete everything.
- An answer never holds a value: ``{id, name, type, metadata, createdAt}`` and runplane's own
  ``kind``, ``owner`` and ``stored``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from graphql import GraphQLResolveInfo

from events import secrets
from events.access import SecretAction, SecretsForbidden, authorize_secrets
from events.model import SecretType
from events.secrets import BadSecret, Secret, SecretRefused
from services.api.context import Context, context_of
from services.api.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound, NotSetUp
from services.api.vault import Listed, NotConfigured
from services.api.wire import INPUT_KEYS, MAPI_TYPES, NOT_KEPT, ONE_VALUE
from services.core.sealing import SealingError

Json = dict[str, Any]

NO_KEYRING: Final = (
    "Secrets are not set up on this server: its operator gives the API server a keyring "
    "(RUNPLANE_SECRETS_KEYRING_FILE; `mcli dev up` draws one)"
)


# --- the wire ---------------------------------------------------------------------------------


def secret_of_input(data: Json) -> tuple[Secret, str]:
    """The secret ``createSecretData`` describes, and where it came from (its key, for errors);
    ``BadRequest`` naming the field that is wrong."""
    given = [key for key, value in data.items() if key != "entity" and value is not None]
    for key in given:
        if key in NOT_KEPT:
            raise BadRequest(
                f"createSecretData.{key}: runplane does not keep {NOT_KEPT[key]} secrets; it keeps "
                "env, mounted, docker, ssh, git-ssh, s3, gcp and hf secrets"
            )
        if key not in INPUT_KEYS:
            raise BadRequest(f"createSecretData.{key}: not a kind of secret")
    if len(given) != 1:
        raise BadRequest(
            "createSecretData: give exactly one of " + ", ".join(INPUT_KEYS) + f" (got {given})"
        )
    key = given[0]
    where = f"createSecretData.{key}"
    body = data[key]
    if not isinstance(body, dict):
        raise BadRequest(f"{where}: expected an object with name, metadata and value")
    name = body.get("name")
    if not isinstance(name, str):
        raise BadRequest(f"{where}.name: is required (a string)")
    metadata = _strings(body.get("metadata"), f"{where}.metadata")
    kind = INPUT_KEYS[key]
    if kind == "env" and metadata.get("key") == secrets.HF_KEY:
        kind = "hf"  # as the client reads it back (``from_mapi_response``)
    raw = body.get("value")
    if kind in ONE_VALUE:
        if not isinstance(raw, str):
            raise BadRequest(f"{where}.value: is required (a string)")
        value = {"value": raw}
    else:
        value = _strings(raw, f"{where}.value")
    return Secret(name=name, secret_type=kind, metadata=metadata, value=value), where


def _strings(raw: object, where: str) -> dict[str, str]:
    """An object of strings; null fields dropped (mcli sends ``email: null``)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}: expected an object")
    found = {}
    for field, value in raw.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequest(f"{where}.{field}: expected a string")  # never the value itself
        found[str(field)] = value
    return found


def iso(ms: int) -> str:
    """With microseconds: the client parses ``%Y-%m-%dT%H:%M:%S.%f%z`` and nothing else."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="microseconds")


def _placeholder(kind: SecretType) -> dict[str, str]:
    """Metadata for a secret with no stored value, that the client still parses."""
    if kind in secrets.ENV_TYPES:
        return {"key": secrets.HF_KEY if kind == "hf" else ""}
    if kind in secrets.FILE_TYPES:
        return {"mountPath": ""}
    return {}


def wire(listed: Listed) -> Json:
    kind = listed.state.secret_type
    return {
        "id": listed.state.secret_id,
        "name": listed.state.name,
        "type": MAPI_TYPES[kind],
        "metadata": listed.metadata if listed.metadata is not None else _placeholder(kind),
        "createdAt": iso(listed.state.created_at),
        "kind": kind,
        "owner": listed.owner,
        "stored": listed.stored,
    }


# --- whose, and who may -----------------------------------------------------------------------


def owner_of(context: Context, entity: Json | None) -> str:
    """Whose secrets: the one user ``entity`` names (by id or email: both are the name), else
    the caller."""
    named = {*((entity or {}).get("userIds") or []), *((entity or {}).get("emails") or [])}
    if len(named) > 1:
        raise BadRequest("entity: name one user (userIds or emails), not several")
    return named.pop() if named else context.principal.name


async def _authorize(context: Context, action: SecretAction, owner: str) -> None:
    try:
        authorize_secrets(context.principal, action, owner)
    except SecretsForbidden as refused:
        if refused.token:
            raise Forbidden(
                "A run's token manages no secrets; use an API key (`mcli set api-key`)"
            ) from None
        why = Forbidden(
            f"{refused.actor} may not {action} {owner}: a user manages their own secrets; an "
            "admin may list and delete another user's, and create secrets for no one else"
        )
        raise await context.runs.refused(
            context.principal, f"{action}".split(" ")[0] + " secrets", owner, why
        ) from None


def _refused(error: SecretRefused) -> ApiError:
    if error.missing and error.name == "-":  # no such user (an admin named one)
        return NotFound(f"User {error.owner} not found")
    if error.missing:
        return NotFound(f"Secret {error.name} not found")
    return Conflict(f"Secret {error.name}: {error.why}")


# --- resolvers --------------------------------------------------------------------------------


async def create_secret(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = context_of(info)
    data: Json = args["createSecretData"]
    owner = owner_of(context, data.get("entity"))
    await _authorize(context, SecretAction.CREATE, owner)
    secret, where = secret_of_input(data)
    try:
        listed = await context.vault.create(context.principal.name, owner, secret)
    except BadSecret as bad:
        raise BadRequest(f"{where}.{bad.field}: {bad.why}") from None
    except SecretRefused as refused:
        raise _refused(refused) from None
    except NotConfigured:
        raise NotSetUp(NO_KEYRING) from None
    except SealingError as exc:
        raise ApiError(f"Secrets cannot be sealed on this server: {exc}") from None
    return [wire(listed)]


def _selected(listed: list[Listed], filters: Json) -> list[Listed]:
    chosen: Json = filters.get("name") or {}
    patterns = list(chosen.get("in") or [])
    if chosen.get("equals") is not None:
        patterns.append(chosen["equals"])
    types = set((filters.get("type") or {}).get("in") or [])
    unknown = sorted(types - set(MAPI_TYPES.values()))
    if unknown:
        raise BadRequest(
            f"getSecretsData.filters.type.in: {', '.join(unknown)} is not one of "
            + ", ".join(sorted(set(MAPI_TYPES.values())))
        )
    return [
        item
        for item in listed
        if (not patterns or any(fnmatch.fnmatchcase(item.state.name, p) for p in patterns))
        and (not types or MAPI_TYPES[item.state.secret_type] in types)
    ]


async def get_secrets(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = context_of(info)
    data: Json = args["getSecretsData"]
    owner = owner_of(context, data.get("entity"))
    await _authorize(context, SecretAction.LIST, owner)
    try:
        listed = await context.vault.listing(owner)
    except SecretRefused as refused:
        raise _refused(refused) from None
    return [wire(item) for item in _selected(listed, data.get("filters") or {})]


async def delete_secrets(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = context_of(info)
    data: Json = args["getSecretsData"]
    owner = owner_of(context, data.get("entity"))
    await _authorize(context, SecretAction.DELETE, owner)
    filters: Json = data.get("filters") or {}
    others = sorted(key for key, value in filters.items() if key != "name" and value)
    chosen: Json = filters.get("name") or {}
    names = list(chosen.get("in") or [])
    if chosen.get("equals") is not None:
        names.append(chosen["equals"])
    if others or not names:
        raise BadRequest(
            "getSecretsData.filters.name.in: name the secrets to delete (list them first with "
            "`mcli get secrets`); a deletion selects by name only, and never means all of them"
        )
    try:
        deleted = await context.vault.delete(context.principal.name, owner, names)
    except SecretRefused as refused:
        raise _refused(refused) from None
    return [wire(item) for item in deleted]


QUERIES: dict[str, Callable[..., Any]] = {"getSecrets": get_secrets}
MUTATIONS: dict[str, Callable[..., Any]] = {
    "createSecret": create_secret,
    "deleteSecrets": delete_secrets,
}
