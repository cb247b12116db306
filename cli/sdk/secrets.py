"""mcli's secret functions: ``create_secret``, ``get_secrets``, ``delete_secrets``.

A secret to create is an ``events.secrets.Secret`` (its type's fields: ``docs/secrets.md``);
what comes back is a ``SecretInfo``: name, type, metadata, when, whose; never a value. Errors
are ``cli.client.ClientError`` with the API's code (409 a name taken, 400 a bad field naming
it, 404 an unknown name).
"""

from __future__ import annotations

from collections.abc import Sequence

from cli import secrets as remote
from cli.sdk.sync import call
from cli.secrets import SecretInfo
from events.model import SecretType
from events.secrets import SECRET_TYPES, Secret

SecretRef = SecretInfo | Secret | str


def _names(secrets: Sequence[SecretRef] | None) -> list[str]:
    return [s if isinstance(s, str) else s.name for s in secrets or []]


def _types(types: Sequence[str] | None) -> list[SecretType] | None:
    if not types:
        return None
    known = {t: t for t in SECRET_TYPES} | {shown: t for t, shown in remote.SHOWN.items()}
    unknown = [t for t in types if t not in known]
    if unknown:
        raise ValueError(f"unknown secret type(s) {unknown}: one of {sorted(known)}")
    return [known[t] for t in types]


def create_secret(secret: Secret) -> SecretInfo:
    """Store ``secret`` for the caller; what the API shows of it."""
    return call(lambda client: remote.create(client.api, secret))


def get_secrets(
    secrets: Sequence[SecretRef] | None = None, *, secret_types: Sequence[str] | None = None
) -> list[SecretInfo]:
    """The caller's secrets, by name (names or globs; all if None), of these types (runplane's
    names, or mcli's: ``environment``, ``docker_registry``, ...)."""
    names, types = _names(secrets), _types(secret_types)
    return call(lambda client: remote.listing(client.api, names or None, types))


def delete_secrets(secrets: Sequence[SecretRef]) -> list[SecretInfo]:
    """Delete the caller's secrets of these exact names: all of them, or none (404)."""
    names = _names(secrets)
    if not names:
        raise ValueError("name the secrets to delete")
    return call(lambda client: remote.delete(client.api, names))
