"""Secret values at rest: AES-256-GCM under a keyring, each value bound to whose and what it is.

The **keyring** is a file (JSON, mode 0600, ``RUNPLANE_SECRETS_KEYRING_FILE``) of one or more
256-bit keys, each with an id, the newest last: the newest seals, any opens what it sealed. Only
the API server (which seals) and the node-agents (which open, to hand a run its owner's secrets)
are given it; ``mcli dev up`` draws it (``provision``), ``mcli admin secrets rotate-key`` adds a
key and drops the ones no value uses (``cli.rotation``).

A **sealed value** (what ``keys.secret_values(owner)`` holds under the secret's name) is JSON:
``{v, secret_id, secret_type, metadata, key_id, nonce, ciphertext}``; the nonce (96 bits,
drawn fresh for every seal) and the ciphertext (with GCM's 128-bit tag) in base64. The
plaintext is the JSON of the secret's value fields. The associated data binds the ciphertext to
its owner, name, type, id and metadata (``_aad``): a sealed value copied into another user's
hash, under another name, type or mount path, or left by a deleted secret of the same name,
does not open: GCM refuses it as it refuses a changed byte (``Tampered``).

Invariants: a value is never logged, never in an exception's message (errors name the owner,
the secret and the key id); ``Secret.__repr__`` hides it. Reading the keyring re-reads the file
when it changed (``KeyringFile``), and at once when a value names a key id it does not hold:
another process may have rotated it. The ``cryptography`` package (about 9 MiB a process) is
imported at the first seal or open, not with this module: a node-agent whose runs have no
secrets, and an API server no secret was asked of, never load it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from events.identity import KEY_ID_ALPHABET
from events.model import SecretType
from events.secrets import Secret
from services.core.private import write_private

KEYRING_FILE: Final = "keyring.json"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
_KEY_ID_LENGTH: Final = 12
_VERSION: Final = 1


class SealingError(Exception):
    """Root of the errors of sealed values and keyrings."""


class KeyringError(SealingError):
    """The keyring file cannot be read or is not a keyring: the message names it and says why."""


class UnknownKey(SealingError):
    """A value was sealed under a key the keyring does not hold (dropped, or from another
    deployment's keyring)."""

    def __init__(self, owner: str, name: str, key_id: str) -> None:
        super().__init__(
            f"secret {name} of {owner} is sealed under key {key_id}, which the keyring does not "
            "hold: was the keyring replaced? delete the secret and create it again"
        )
        self.owner, self.name, self.key_id = owner, name, key_id


class Tampered(SealingError):
    """A sealed value that does not open: changed, damaged, or not this secret's."""

    def __init__(self, owner: str, name: str, key_id: str) -> None:
        super().__init__(
            f"secret {name} of {owner} does not decrypt under key {key_id}: its stored value "
            "was changed or damaged, or belongs to another secret; it is refused (delete the "
            "secret and create it again)"
        )
        self.owner, self.name, self.key_id = owner, name, key_id


# --- the keyring --------------------------------------------------------------------------------


class _KeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    key: str  # base64 of KEY_BYTES


class _KeyringDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    keys: list[_KeyEntry]
    v: int = _VERSION


@dataclass(frozen=True)
class Keyring:
    """Keys by id, in order: the last is the newest (the one that seals)."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError("a keyring holds at least one key")
        ids = [key_id for key_id, _ in self.keys]
        if len(set(ids)) != len(ids):
            raise KeyringError("a keyring holds each key id once")
        if any(len(key) != KEY_BYTES for _, key in self.keys):
            raise KeyringError(f"every key of a keyring is {KEY_BYTES * 8} bits")

    def __repr__(self) -> str:  # never the keys
        return f"Keyring(ids={self.ids})"

    @property
    def ids(self) -> list[str]:
        return [key_id for key_id, _ in self.keys]

    @property
    def newest(self) -> str:
        return self.keys[-1][0]

    def key(self, key_id: str) -> bytes | None:
        return dict(self.keys).get(key_id)

    def adding(self, key_id: str, key: bytes) -> Keyring:
        """This keyring with a new newest key."""
        return Keyring((*self.keys, (key_id, key)))

    def keeping(self, used: set[str]) -> Keyring:
        """This keyring with only the newest key and the keys in ``used``."""
        return Keyring(tuple(k for k in self.keys if k[0] in used or k[0] == self.newest))

    def encode(self) -> bytes:
        entries = [_KeyEntry(i, base64.b64encode(k).decode()) for i, k in self.keys]
        return msgspec.json.format(msgspec.json.encode(_KeyringDoc(entries)), indent=2)

    @classmethod
    def decode(cls, data: bytes, where: str) -> Keyring:
        try:
            doc = msgspec.json.decode(data, type=_KeyringDoc)
            keys = tuple((e.id, base64.b64decode(e.key, validate=True)) for e in doc.keys)
            return cls(keys)
        except (msgspec.DecodeError, ValueError) as exc:
            raise KeyringError(f"{where} is not a runplane keyring: {exc}") from None
        except KeyringError as exc:
            raise KeyringError(f"{where}: {exc}") from None


def draw_key() -> tuple[str, bytes]:
    """A new key and its id (public: it is in every value it seals)."""
    key_id = "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(_KEY_ID_LENGTH))
    return key_id, secrets.token_bytes(KEY_BYTES)


def load_keyring(path: Path) -> Keyring:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyringError(
            f"cannot read the secrets keyring {path}: {exc.strerror or exc}"
        ) from None
    return Keyring.decode(data, str(path))


def write_keyring(path: Path, keyring: Keyring) -> None:
    """``keyring`` in ``path`` (mode 0600 from the first byte, replaced whole)."""
    write_private(path, keyring.encode().decode())


def keyring_path(directory: Path) -> Path:
    return directory / KEYRING_FILE


def provision(directory: Path, *, owner: int | None = None) -> Path:
    """A keyring of one new key in ``directory``, unless one is there (kept: the values sealed
    under it must still open); its path. ``owner``: a uid to give the file to."""
    path = keyring_path(directory)
    with contextlib.suppress(KeyringError):
        load_keyring(path)
        return path
    if path.exists():  # there, but not a keyring: refuse to draw over what may be keys
        load_keyring(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_keyring(path, Keyring((draw_key(),)))
    if owner is not None:
        os.chown(path, owner, -1)
    return path


class KeyringFile:
    """The keyring of a file, read again when the file changed (another process rotated it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keyring: Keyring | None = None

    def current(self) -> Keyring:
        """The file's keyring, re-read if its inode, size or time changed since last read."""
        try:
            st = self.path.stat()
        except OSError as exc:
            raise KeyringError(
                f"cannot read the secrets keyring {self.path}: {exc.strerror or exc}"
            ) from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._keyring is None or stamp != self._stamp:
            self._keyring, self._stamp = load_keyring(self.path), stamp
        return self._keyring

    def reload(self) -> Keyring:
        self._stamp = None
        return self.current()


# --- sealed values ------------------------------------------------------------------------------


class Sealed(msgspec.Struct, frozen=True, kw_only=True):
    """A sealed value as it is stored: all but ``ciphertext`` readable without a key."""

    v: int = _VERSION
    secret_id: str
    secret_type: SecretType
    metadata: dict[str, str]
    key_id: str
    nonce: str
    ciphertext: str

    def encode(self) -> bytes:
        return msgspec.json.encode(self)


class _Bound(msgspec.Struct, array_like=True, frozen=True):
    """What the associated data binds, in a fixed order (an array: no key order to vary)."""

    v: int
    owner: str
    name: str
    secret_type: str
    secret_id: str
    metadata: list[tuple[str, str]]


def _aad(
    owner: str, name: str, sealed_type: str, secret_id: str, metadata: dict[str, str]
) -> bytes:
    bound = _Bound(_VERSION, owner, name, sealed_type, secret_id, sorted(metadata.items()))
    return msgspec.json.encode(bound)


def peek(data: bytes) -> Sealed:
    """The readable part of a stored value (no key needed); ``SealingError`` if it is not one."""
    try:
        return msgspec.json.decode(data, type=Sealed)
    except msgspec.DecodeError as exc:
        raise SealingError(f"not a sealed secret value: {exc}") from None


def seal(
    keyring: Keyring, owner: str, secret: Secret, secret_id: str, nonce: bytes | None = None
) -> bytes:
    """``secret``'s value sealed under the keyring's newest key, as it is stored. ``nonce``:
    for tests that need a fixed one; otherwise drawn (never reuse one under a key)."""
    key_id = keyring.newest
    key = keyring.key(key_id)
    assert key is not None
    nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
    aad = _aad(owner, secret.name, secret.secret_type, secret_id, secret.metadata)
    plaintext = msgspec.json.encode(secret.value)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415 - see module

    ciphertext = AESGCM(key).encrypt(nonce, plaintext, aad)
    return Sealed(
        secret_id=secret_id,
        secret_type=secret.secret_type,
        metadata=dict(secret.metadata),
        key_id=key_id,
        nonce=base64.b64encode(nonce).decode(),
        ciphertext=base64.b64encode(ciphertext).decode(),
    ).encode()


def unseal(keyring: Keyring, owner: str, name: str, data: bytes) -> tuple[Secret, Sealed]:
    """The secret ``name`` of ``owner`` stored as ``data``, opened; ``UnknownKey`` for a key the
    keyring lacks, ``Tampered`` for a value that does not open (changed, or not this one's)."""
    sealed = peek(data)
    key = keyring.key(sealed.key_id)
    if key is None:
        raise UnknownKey(owner, name, sealed.key_id)
    aad = _aad(owner, name, sealed.secret_type, sealed.secret_id, sealed.metadata)
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - see the module
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    try:
        nonce = base64.b64decode(sealed.nonce, validate=True)
        ciphertext = base64.b64decode(sealed.ciphertext, validate=True)
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, aad)
        value = msgspec.json.decode(plaintext, type=dict[str, str])
    except (InvalidTag, ValueError, msgspec.DecodeError):
        raise Tampered(owner, name, sealed.key_id) from None
    secret = Secret(
        name=name, secret_type=sealed.secret_type, metadata=dict(sealed.metadata), value=value
    )
    return secret, sealed


def reseal(keyring: Keyring, owner: str, name: str, data: bytes) -> bytes | None:
    """``data`` sealed again under the keyring's newest key (same secret id and metadata);
    None if it is under the newest already."""
    sealed = peek(data)
    if sealed.key_id == keyring.newest:
        return None
    secret, _ = unseal(keyring, owner, name, data)
    return seal(keyring, owner, secret, sealed.secret_id)
