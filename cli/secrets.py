"""Users' secrets from the client's side: the API's three operations (``createSecret``,
``getSecrets``, ``deleteSecrets``, shaped as the real client shapes them:
``docs/mcli-secrets.md``) and what they answer, for the CLI and the SDK.

A secret's value goes out in the one request that creates it and never comes back: an answer
holds names, types, where each goes in a run (metadata) and when it was made.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from cli.api import Api
from events.model import SecretType
from events.secrets import Secret
from services.api.wire import MAPI_TYPES, input_of

_FIELDS = "id name type metadata createdAt kind owner stored"
CREATE: Final = f"""
mutation CreateSecret($createSecretData: CreateSecretInput!) {{
  createSecret(createSecretData: $createSecretData) {{ {_FIELDS} }}
}}"""
GET: Final = f"""
query GetSecrets($getSecretsData: GetSecretsInput!) {{
  getSecrets(getSecretsData: $getSecretsData) {{ {_FIELDS} }}
}}"""
DELETE: Final = f"""
mutation DeleteSecrets($getSecretsData: GetSecretsInput!) {{
  deleteSecrets(getSecretsData: $getSecretsData) {{ {_FIELDS} }}
}}"""

#: How mcli names each type where it shows one (``mcli get secrets``, "Created ... secret").
SHOWN: Final[dict[SecretType, str]] = {
    "env": "environment",
    "hf": "hugging_face",
    "docker": "docker_registry",
    "mounted": "mounted",
    "ssh": "ssh",
    "git": "git",
    "s3": "s3",
    "gcp": "gcp",
}


class SecretInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A secret as the API shows it: never its value."""

    id: str
    name: str
    secret_type: SecretType
    metadata: dict[str, str]
    created_at: datetime
    owner: str
    stored: bool = True

    @property
    def shown_type(self) -> str:
        return SHOWN[self.secret_type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.shown_type,
            "created_at": self.created_at.isoformat(),
        }


def _info(data: dict[str, Any]) -> SecretInfo:
    return SecretInfo(
        id=data["id"],
        name=data["name"],
        secret_type=data["kind"],
        metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        created_at=datetime.fromisoformat(data["createdAt"]),
        owner=data["owner"],
        stored=bool(data.get("stored", True)),
    )


def _entity(owner: str | None) -> dict[str, Any]:
    return {} if owner is None else {"entity": {"userIds": [owner]}}


async def create(api: Api, secret: Secret) -> SecretInfo:
    answer = await api.call(CREATE, {"createSecretData": input_of(secret)})
    (created,) = answer["createSecret"]
    return _info(created)


async def listing(
    api: Api,
    names: list[str] | None = None,
    types: list[SecretType] | None = None,
    *,
    owner: str | None = None,
) -> list[SecretInfo]:
    """The caller's secrets (or ``owner``'s, for an admin): ``names`` exact or globs, of
    ``types`` (any, if None)."""
    filters: dict[str, Any] = {}
    if names:
        filters["name"] = {"in": list(names)}
    if types:
        filters["type"] = {"in": sorted({MAPI_TYPES[t] for t in types})}
    data = {"filters": filters, **_entity(owner)}
    answer = await api.call(GET, {"getSecretsData": data})
    found = [_info(item) for item in answer["getSecrets"]]
    # MAPI's ENV_VAR holds env and hf secrets both: keep the kinds asked for.
    return [s for s in found if not types or s.secret_type in types]


async def delete(api: Api, names: list[str], *, owner: str | None = None) -> list[SecretInfo]:
    """Delete the secrets of these exact names: all, or none (``NotFound``)."""
    data = {"filters": {"name": {"in": list(names)}}, **_entity(owner)}
    answer = await api.call(DELETE, {"getSecretsData": data})
    return [_info(item) for item in answer["deleteSecrets"]]
