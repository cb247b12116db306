"""Sealed secret values (``services.core.sealing``): AES-256-GCM under a keyring, each value
bound to its owner, name, type, id and metadata; a changed byte, a value moved to another secret
or a key the keyring lacks is refused with an error that names the secret and never the value."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.secrets import Secret
from services.core import sealing
from services.core.sealing import Keyring, KeyringError, Tampered, UnknownKey

KEY_A = ("keyaaaaaaaaa", b"a" * 32)
KEY_B = ("keybbbbbbbbb", b"b" * 32)
OWNER = "alice"
VALUE = "s3cr3t-value-never-shown"
SECRET = Secret(
    name="db-password",
    secret_type="mounted",
    metadata={"mountPath": "/secrets/db-password"},
    value={"value": VALUE},
)


RING_A = Keyring((KEY_A,))


def sealed(keyring: Keyring = RING_A, secret: Secret = SECRET) -> bytes:
    return sealing.seal(keyring, OWNER, secret, "event-1")


def test_a_sealed_value_opens_to_the_secret_and_holds_no_clear_value() -> None:
    data = sealed()
    assert VALUE.encode() not in data
    assert base64.b64encode(VALUE.encode()) not in data
    opened, info = sealing.unseal(Keyring((KEY_A,)), OWNER, SECRET.name, data)
    assert opened == SECRET
    assert info.key_id == KEY_A[0]
    assert info.secret_id == "event-1"
    assert info.metadata == SECRET.metadata  # readable without the key: getSecrets shows it


def test_every_seal_draws_a_fresh_nonce() -> None:
    assert sealed() != sealed()


def test_the_newest_key_seals_and_any_key_of_the_ring_opens() -> None:
    data = sealed(Keyring((KEY_A,)))
    both = Keyring((KEY_A, KEY_B))
    assert sealing.peek(sealed(both)).key_id == KEY_B[0]
    opened, _ = sealing.unseal(both, OWNER, SECRET.name, data)
    assert opened == SECRET


@pytest.mark.parametrize(
    ("owner", "name", "change"),
    [
        ("bob", SECRET.name, {}),  # moved into another user's hash
        (OWNER, "other-name", {}),  # under another name
        (OWNER, SECRET.name, {"secret_type": "ssh"}),
        (OWNER, SECRET.name, {"metadata": {"mountPath": "/etc/passwd"}}),
        (OWNER, SECRET.name, {"secret_id": "event-2"}),  # left by a secret deleted meanwhile
    ],
)
def test_a_value_is_bound_to_whose_and_what_it_is(
    owner: str, name: str, change: dict[str, object]
) -> None:
    info = sealing.peek(sealed())
    moved = msgspec.structs.replace(info, **change).encode()
    with pytest.raises(Tampered, match=f"secret {name} of {owner} does not decrypt"):
        sealing.unseal(Keyring((KEY_A,)), owner, name, moved)


@settings(max_examples=50, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_changed_bit_of_the_ciphertext_or_nonce_is_refused(position: int, bit: int) -> None:
    info = sealing.peek(sealed())
    for field in ("ciphertext", "nonce"):
        raw = bytearray(base64.b64decode(getattr(info, field)))
        raw[position % len(raw)] ^= 1 << bit
        changed = msgspec.structs.replace(info, **{field: base64.b64encode(raw).decode()})
        with pytest.raises(Tampered) as refused:
            sealing.unseal(Keyring((KEY_A,)), OWNER, SECRET.name, changed.encode())
        assert VALUE not in str(refused.value)


def test_a_key_the_ring_lacks_is_named() -> None:
    with pytest.raises(UnknownKey, match=f"sealed under key {KEY_A[0]}"):
        sealing.unseal(Keyring((KEY_B,)), OWNER, SECRET.name, sealed())


def test_reseal_moves_a_value_to_the_newest_key_and_keeps_its_id() -> None:
    both = Keyring((KEY_A, KEY_B))
    data = sealed(Keyring((KEY_A,)))
    again = sealing.reseal(both, OWNER, SECRET.name, data)
    assert again is not None
    info = sealing.peek(again)
    assert (info.key_id, info.secret_id) == (KEY_B[0], "event-1")
    opened, _ = sealing.unseal(Keyring((KEY_B,)), OWNER, SECRET.name, again)
    assert opened == SECRET
    assert sealing.reseal(both, OWNER, SECRET.name, again) is None


def test_the_repr_of_a_secret_and_a_keyring_shows_no_value_and_no_key() -> None:
    assert VALUE not in repr(SECRET)
    assert VALUE not in str(SECRET)
    ring = Keyring((KEY_A,))
    assert "aaaa" * 4 not in repr(ring)
    assert base64.b64encode(KEY_A[1]).decode() not in repr(ring)


def test_a_keyring_keeps_the_newest_key_and_those_in_use() -> None:
    key_c = ("keycccccccccc", b"c" * 32)
    ring = Keyring((KEY_A, KEY_B, key_c))
    assert ring.keeping({KEY_A[0]}).ids == [KEY_A[0], key_c[0]]
    assert ring.keeping(set()).ids == [key_c[0]]


@pytest.mark.parametrize(
    "keys",
    [(), (KEY_A, KEY_A), (("short", b"x" * 16),)],
    ids=["empty", "an id twice", "a 128-bit key"],
)
def test_a_keyring_refuses_what_is_no_keyring(keys: tuple[tuple[str, bytes], ...]) -> None:
    with pytest.raises(KeyringError):
        Keyring(keys)


def test_the_keyring_file_is_0600_kept_once_drawn_and_read_again_when_it_changes(
    tmp_path: Path,
) -> None:
    path = sealing.provision(tmp_path / "secrets")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = sealing.load_keyring(path)
    assert sealing.provision(tmp_path / "secrets") == path
    assert sealing.load_keyring(path) == first  # kept: the values sealed under it need it
    watched = sealing.KeyringFile(path)
    assert watched.current() == first
    rotated = first.adding(*sealing.draw_key())
    sealing.write_keyring(path, rotated)
    assert watched.current() == rotated
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_file_that_is_no_keyring_is_named_and_never_drawn_over(tmp_path: Path) -> None:
    path = sealing.keyring_path(tmp_path)
    path.write_text("not json")
    with pytest.raises(KeyringError, match=str(path)):
        sealing.load_keyring(path)
    with pytest.raises(KeyringError):
        sealing.provision(tmp_path)
    assert path.read_text() == "not json"
    with pytest.raises(KeyringError, match="cannot read"):
        sealing.load_keyring(tmp_path / "missing.json")
