"""Users and API keys (``events.identity``): the fold's rules, the decisions, and who a key is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.access import Principal
from events.codec import BODY, KIND, decode, encode
from events.errors import IllegalTransition
from events.identity import (
    KEY_ID_ALPHABET,
    KEY_ID_LENGTH,
    SETUP_ACTOR,
    IdentityRefused,
    Unauthenticated,
    UserState,
    Why,
    add_user,
    authenticate,
    evolve,
    fold,
    issue_key,
    key_index,
    new_key,
    parse_key,
    revoke_key,
)
from events.model import AnyUserEvent, KeyIssued, KeyRevoked, Role, UserAdded

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
SETUP = SETUP_ACTOR
NOW = 1_764_000_000_000
SECRET = "Zq3" + "x" * 40  # the shape of secrets.token_urlsafe(32): 43 URL-safe characters
OTHER_SECRET = "Yp2" + "y" * 40
KEY = new_key("abcd1234efgh", SECRET)


def added(user: str = "alice", role: Role = "user", time: int = 1) -> UserAdded:
    return UserAdded(id=f"u-{user}", actor=SETUP, user=user, role=role, time=time)


def issued(
    key_id: str = KEY.key_id,
    key_hash: str = KEY.key_hash,
    user: str = "alice",
    expires_at: int | None = None,
) -> KeyIssued:
    return KeyIssued(
        id=f"k-{key_id}",
        actor="root",
        user=user,
        key_id=key_id,
        key_hash=key_hash,
        expires_at=expires_at,
        time=2,
    )


def revoked(key_id: str = KEY.key_id, user: str = "alice") -> KeyRevoked:
    return KeyRevoked(id=f"r-{key_id}", actor="root", user=user, key_id=key_id, time=3)


def user(*events: AnyUserEvent) -> UserState:
    state = fold(events)
    assert state is not None
    return state


def refused(state: UserState | None, event: AnyUserEvent, why: str) -> None:
    with pytest.raises(IllegalTransition, match=why) as refusal:
        evolve(state, event)
    assert refusal.value.aggregate == f"user:{event.user}"


# --- the fold -----------------------------------------------------------------------------------


def test_a_user_folds_from_their_events_with_the_version_to_append_on() -> None:
    state = user(added(), issued(), revoked())
    assert (state.name, state.role, state.added_by, state.version) == ("alice", "user", SETUP, 3)
    key = state.keys[KEY.key_id]
    assert (key.key_hash, key.issued_by, key.revoked_at, key.revoked_by) == (
        KEY.key_hash,
        "root",
        3,
        "root",
    )
    assert state.principal == Principal(name="alice", role="user")


def test_nothing_happens_to_a_user_before_they_are_added() -> None:
    refused(None, issued(), "the user does not exist")
    refused(None, revoked(), "the user does not exist")


def test_a_user_is_added_once() -> None:
    refused(user(added()), added(role="admin"), "the user exists already")


@pytest.mark.parametrize("name", ["", " alice", "al ice", "-alice", "a" * 129, "alice\n"])
def test_a_user_name_is_refused_unless_plain(name: str) -> None:
    refused(None, added(name), "a user name is")


def test_an_event_of_another_user_is_refused() -> None:
    refused(user(added()), issued(user="bob"), "belongs to user bob, not alice")


def test_a_key_id_is_issued_once() -> None:
    refused(user(added(), issued()), issued(key_hash="0" * 64), "was issued already")


@pytest.mark.parametrize("key_id", ["short", "UPPERCASE1", "with_underscore", "a" * 33])
def test_a_key_id_is_lowercase_letters_and_digits(key_id: str) -> None:
    refused(user(added()), issued(key_id=key_id), "a key id is")


@pytest.mark.parametrize("key_hash", [SECRET, "0" * 63, "A" * 64, KEY.presented])
def test_only_a_sha256_hex_digest_is_stored(key_hash: str) -> None:
    refused(user(added()), issued(key_hash=key_hash), "a key hash is a SHA-256 digest")


def test_an_expiry_is_a_time() -> None:
    refused(user(added()), issued(expires_at=0), "expires_at")


def test_only_a_known_live_key_is_revoked() -> None:
    refused(user(added()), revoked(), "alice has no key")
    refused(user(added(), issued(), revoked()), revoked(), "revoked already")


def test_a_refused_event_leaves_the_state_as_it_was() -> None:
    state = user(added(), issued())
    before = msgspec.to_builtins(state)
    with pytest.raises(IllegalTransition):
        evolve(state, issued())
    assert msgspec.to_builtins(state) == before


# --- keys ---------------------------------------------------------------------------------------


def test_a_key_reads_rpk_id_secret_and_the_log_keeps_the_sha256_of_the_secret() -> None:
    assert KEY.presented == f"rpk_abcd1234efgh_{SECRET}"
    assert KEY.key_hash == hashlib.sha256(SECRET.encode()).hexdigest()
    assert parse_key(KEY.presented) == ("abcd1234efgh", SECRET)


def test_a_secret_with_underscores_parses_whole() -> None:
    secret = "_a-b_" + "c" * 40
    assert parse_key(new_key("abcd1234efgh", secret).presented) == ("abcd1234efgh", secret)


@given(
    key_id=st.text(KEY_ID_ALPHABET, min_size=KEY_ID_LENGTH, max_size=KEY_ID_LENGTH),
    secret=st.text("abcXYZ019-_", min_size=43, max_size=43),
)
def test_every_generated_key_parses_back_and_is_never_stored(key_id: str, secret: str) -> None:
    key = new_key(key_id, secret)
    assert parse_key(key.presented) == (key_id, secret)
    event = issue_key(user(added()), key, "root", "e1", now_ms=NOW)
    fields = encode(event)
    assert secret.encode() not in fields[BODY]
    assert key.presented.encode() not in fields[BODY]


def test_the_stored_event_holds_no_secret() -> None:
    event = issue_key(user(added()), KEY, "root", "e1", now_ms=NOW, expires_at=NOW + 1)
    fields = encode(event)
    assert SECRET.encode() not in fields[KIND] + fields[BODY]
    assert KEY.key_hash.encode() in fields[BODY]
    assert decode("1-0", fields) == msgspec.structs.replace(event, time=1)


@pytest.mark.parametrize(("key_id", "secret"), [("short", SECRET), ("abcd1234efgh", "tooshort")])
def test_a_key_is_made_of_a_valid_id_and_secret(key_id: str, secret: str) -> None:
    with pytest.raises(ValueError, match=r"a (key id|secret) is"):
        new_key(key_id, secret)


# --- authenticate -------------------------------------------------------------------------------


def users(*states: UserState) -> dict[str, UserState]:
    return key_index(states)


ALICE = user(added(), issued())


def why(index: dict[str, UserState], presented: str | None, now_ms: int = NOW) -> Why:
    with pytest.raises(Unauthenticated) as refusal:
        authenticate(index, presented, now_ms)
    assert str(refusal.value) == f"invalid API key ({refusal.value.why})"
    return refusal.value.why


def test_a_live_key_is_its_owner() -> None:
    assert authenticate(users(ALICE), KEY.presented, NOW) == Principal(name="alice", role="user")
    admin = user(added("root", "admin"), issued(user="root"))
    assert authenticate(users(admin), KEY.presented, NOW) == Principal(name="root", role="admin")


@pytest.mark.parametrize("presented", [None, ""])
def test_no_key_is_missing(presented: str | None) -> None:
    assert why(users(ALICE), presented) is Why.MISSING


@pytest.mark.parametrize(
    "presented",
    [
        SECRET,
        f"rpk_{SECRET}",
        "rpk_abcd1234efgh_",
        "rpk__" + SECRET,
        f"RPK_abcd1234efgh_{SECRET}",
        f"rpk_ABCD1234EFGH_{SECRET}",
        f"rpk_abcd1234efgh_{SECRET} ",
        f"rpk_abcd1234efgh_{SECRET}é",
        f"rpk_abcd1234efgh_{SECRET * 4}",
        "Bearer " + KEY.presented,
    ],
)
def test_a_key_of_the_wrong_shape_is_malformed(presented: str) -> None:
    assert why(users(ALICE), presented) is Why.MALFORMED


def test_an_unknown_id_or_a_wrong_secret_is_unknown() -> None:
    assert why(users(ALICE), new_key("zzzz9999zzzz", SECRET).presented) is Why.UNKNOWN
    assert why(users(ALICE), new_key(KEY.key_id, OTHER_SECRET).presented) is Why.UNKNOWN
    assert why(users(), KEY.presented) is Why.UNKNOWN


def test_a_revoked_key_stops_working() -> None:
    state = user(added(), issued())
    assert authenticate(users(state), KEY.presented, NOW).name == "alice"
    evolve(state, revoked())
    assert why(users(state), KEY.presented) is Why.REVOKED


def test_a_wrong_secret_for_a_revoked_key_says_nothing_of_its_state() -> None:
    state = user(added(), issued(), revoked())
    assert why(users(state), new_key(KEY.key_id, OTHER_SECRET).presented) is Why.UNKNOWN


def test_a_key_works_until_the_millisecond_it_expires() -> None:
    index = users(user(added(), issued(expires_at=NOW)))
    assert authenticate(index, KEY.presented, NOW - 1).name == "alice"
    assert why(index, KEY.presented, NOW) is Why.EXPIRED
    assert why(index, KEY.presented, NOW + 1) is Why.EXPIRED


def test_a_key_id_two_users_hold_works_for_neither() -> None:
    alice = user(added(), issued())
    bob = user(
        added("bob"), issued(user="bob", key_hash=new_key(KEY.key_id, OTHER_SECRET).key_hash)
    )
    index = users(alice, bob)
    assert KEY.key_id not in index
    assert why(index, KEY.presented) is Why.UNKNOWN


# --- decisions ----------------------------------------------------------------------------------


def test_add_user_refuses_a_known_user_and_a_bad_name() -> None:
    assert add_user(None, "bob", "admin", "root", "e1") == UserAdded(
        id="e1", actor="root", user="bob", role="admin"
    )
    with pytest.raises(IdentityRefused, match="exists already"):
        add_user(ALICE, "alice", "user", "root", "e1")
    with pytest.raises(IllegalTransition, match="a user name is"):
        add_user(None, "not a name", "user", "root", "e1")


def test_issue_key_refuses_an_unknown_user_a_known_id_and_a_past_expiry() -> None:
    other = new_key("qqqq1111qqqq", OTHER_SECRET)
    with pytest.raises(IdentityRefused, match="no such user") as missing:
        issue_key(None, other, "root", "e1", now_ms=NOW)
    assert missing.value.missing
    with pytest.raises(IdentityRefused, match="exists already"):
        issue_key(ALICE, KEY, "root", "e1", now_ms=NOW)
    bob = user(added("bob"))
    with pytest.raises(IdentityRefused, match="exists already"):
        issue_key(bob, KEY, "root", "e1", now_ms=NOW, known=users(ALICE))
    with pytest.raises(IdentityRefused, match="not in the future"):
        issue_key(bob, other, "root", "e1", now_ms=NOW, expires_at=NOW)
    event = issue_key(bob, other, "root", "e1", now_ms=NOW, expires_at=NOW + 1)
    assert (event.user, event.key_id, event.expires_at) == ("bob", other.key_id, NOW + 1)
    assert bob.keys == {}, "deciding does not change the state it read"


def test_revoke_key_refuses_an_unknown_or_revoked_key() -> None:
    state = user(added(), issued())
    event = revoke_key(state, KEY.key_id, "root", "e1")
    assert event == KeyRevoked(id="e1", actor="root", user="alice", key_id=KEY.key_id)
    with pytest.raises(IdentityRefused, match="no such key") as missing:
        revoke_key(state, "zzzz9999zzzz", "root", "e1")
    assert missing.value.missing
    with pytest.raises(IdentityRefused, match="no such key"):
        revoke_key(None, KEY.key_id, "root", "e1")
    evolve(state, event)
    with pytest.raises(IdentityRefused, match="revoked already"):
        revoke_key(state, KEY.key_id, "root", "e1")


# --- the recorded shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["user.added@1", "key.issued@1", "key.revoked@1"])
def test_the_golden_sample_is_the_current_encoded_shape(kind: str) -> None:
    recorded = json.loads((GOLDEN / f"{kind}.json").read_text())
    body = recorded["fields"]["e"]
    event = decode(recorded["position"], {KIND: kind.encode(), BODY: msgspec.json.encode(body)})
    fields = encode(msgspec.structs.replace(event, time=0))  # a writer leaves the time to the log
    assert fields[KIND] == kind.encode()
    assert json.loads(fields[BODY]) == body
