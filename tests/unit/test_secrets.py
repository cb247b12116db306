"""A user's secrets (``events.secrets``): each type's fields and rules, the fold of
``secret.created``/``secret.deleted`` in the owner's history, and the decisions; no value in an
event, ever."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import secrets
from events.codec import decode, encode
from events.errors import IllegalTransition
from events.identity import SETUP_ACTOR, evolve, fold
from events.model import SecretCreated, SecretDeleted, SecretType, UserAdded
from events.secrets import BadSecret, Secret, SecretRefused

VALUE = "hunter2-the-value"


def secret(
    kind: SecretType = "env",
    name: str = "api-token",
    metadata: dict[str, str] | None = None,
    value: dict[str, str] | None = None,
) -> Secret:
    defaults: dict[SecretType, tuple[dict[str, str], dict[str, str]]] = {
        "env": ({"key": "API_TOKEN"}, {"value": VALUE}),
        "hf": ({"key": "HF_TOKEN"}, {"value": VALUE}),
        "mounted": ({"mountPath": "/secrets/f"}, {"value": VALUE}),
        "ssh": ({"mountPath": "/secrets/s"}, {"value": VALUE}),
        "git": ({"mountPath": "/secrets/g"}, {"value": VALUE}),
        "gcp": ({"mountPath": "/secrets/c"}, {"value": VALUE}),
        "s3": ({"mountDirectory": "/secrets/aws"}, {"credentials": VALUE, "config": "[default]"}),
        "docker": ({}, {"server": "reg.example:5000", "username": "u", "password": VALUE}),
    }
    meta, val = defaults[kind]
    return Secret(
        name=name,
        secret_type=kind,
        metadata=meta if metadata is None else metadata,
        value=val if value is None else value,
    )


@pytest.mark.parametrize("kind", secrets.SECRET_TYPES)
def test_every_type_has_a_shape_and_its_defaults_pass(kind: SecretType) -> None:
    assert kind in secrets.SHAPES
    secrets.check(secret(kind))


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (secret(name="Upper"), "name"),
        (secret(name="-dash"), "name"),
        (secret(name="x" * 254), "name"),
        (secret(metadata={"key": "1BAD"}), "metadata.key"),
        (secret(metadata={}), "metadata.key"),
        (secret(metadata={"key": "K", "mountPath": "/x"}), "metadata.mountPath"),
        (secret("hf", metadata={"key": "OTHER"}), "metadata.key"),
        (secret(metadata={"key": "HF_TOKEN"}), "metadata.key"),  # that is a hf secret
        (secret("mounted", metadata={"mountPath": "relative/path"}), "metadata.mountPath"),
        (secret("mounted", metadata={"mountPath": "/a/../etc"}), "metadata.mountPath"),
        (secret("mounted", metadata={"mountPath": "/"}), "metadata.mountPath"),
        (secret("s3", metadata={"mountDirectory": "/a//b"}), "metadata.mountDirectory"),
        (secret("ssh", value={"value": ""}), "value.value"),
        (secret("docker", value={"server": "r", "username": "u"}), "value.password"),
        (
            secret("docker", value={"server": "r x", "username": "u", "password": "p"}),
            "value.server",
        ),
        (secret("s3", value={"credentials": "c"}), "value.config"),
        (secret(value={"value": "x", "extra": "y"}), "value.extra"),
        (secret(value={"value": "x" * (secrets.MAX_VALUE_BYTES + 1)}), "value"),
    ],
)
def test_a_bad_field_is_named_and_its_value_never_quoted(given: Secret, field: str) -> None:
    with pytest.raises(BadSecret) as refused:
        secrets.check(given)
    assert refused.value.field == field
    assert VALUE not in str(refused.value)


def test_an_env_value_and_a_mounted_file_may_be_empty() -> None:
    secrets.check(secret(value={"value": ""}))
    secrets.check(secret("mounted", value={"value": ""}))


def added(user: str = "alice") -> UserAdded:
    return UserAdded(id=f"u-{user}", actor=SETUP_ACTOR, user=user, role="user", time=1)


def test_the_owners_history_keeps_names_and_types_and_the_secret_id() -> None:
    created = secrets.create("alice", {}, secret(), "alice", "ev-1")
    state = fold([added(), msgspec.structs.replace(created, time=5)])
    assert state is not None
    kept = state.secrets["api-token"]
    assert (kept.secret_type, kept.secret_id, kept.created_at) == ("env", "ev-1", 5)
    deleted = secrets.delete("alice", state.secrets, "api-token", "alice", "ev-2")
    assert deleted.secret_type == "env"
    after = evolve(state, deleted)
    assert after.secrets == {}


@pytest.mark.parametrize("kind", secrets.SECRET_TYPES)
def test_no_value_is_ever_in_an_event(kind: SecretType) -> None:
    created = secrets.create("alice", {}, secret(kind), "alice", "ev-1")
    fields = encode(created)
    assert VALUE.encode() not in b"".join(fields.values())
    assert set(msgspec.structs.asdict(created)) <= {
        "id", "actor", "via", "time", "causation_id", "correlation_id", "user", "name",
        "secret_type",
    }  # fmt: skip
    assert decode("1-0", fields) == msgspec.structs.replace(created, time=1)


def test_a_taken_name_is_refused_and_an_unknown_one_is_missing() -> None:
    state = fold([added(), secrets.create("alice", {}, secret(), "alice", "ev-1")])
    assert state is not None
    with pytest.raises(SecretRefused, match="exists") as taken:
        secrets.create("alice", state.secrets, secret(), "alice", "ev-2")
    assert not taken.value.missing
    with pytest.raises(SecretRefused) as unknown:
        secrets.delete("alice", state.secrets, "nope", "alice", "ev-3")
    assert unknown.value.missing


def test_two_secrets_may_not_land_in_one_place() -> None:
    state = fold([added(), secrets.create("alice", {}, secret(), "alice", "ev-1")])
    assert state is not None
    taken = {"api-token": "env:API_TOKEN", "gone": "path:/secrets/x"}
    with pytest.raises(SecretRefused, match="api-token is at API_TOKEN"):
        secrets.create("alice", state.secrets, secret(name="again"), "alice", "ev-2", taken=taken)
    # a destination of a secret that is no longer live (``gone``) takes nothing
    inside = secret("mounted", name="inside", metadata={"mountPath": "/secrets/x/y"})
    secrets.create("alice", state.secrets, inside, "alice", "ev-3", taken=taken)


@pytest.mark.parametrize(
    ("one", "other", "collide"),
    [
        ("env:A", "env:A", True),
        ("env:A", "env:B", False),
        ("path:/s/a", "path:/s/a", True),
        ("path:/s/a", "path:/s/a/secret", True),
        ("path:/s/a", "path:/s/ab", False),
        ("env:A", "path:/A", False),
    ],
)
def test_overlaps(one: str, other: str, collide: bool) -> None:
    assert secrets.overlaps(one, other) is collide
    assert secrets.overlaps(other, one) is collide


@given(st.lists(st.sampled_from(["a", "b", "c"]), max_size=12))
def test_the_fold_refuses_what_the_rules_forbid(names: list[str]) -> None:
    """Create or delete each name in turn: the fold agrees with a plain set of live names."""
    state = fold([added()])
    assert state is not None
    live: set[str] = set()
    for index, name in enumerate(names):
        event: SecretCreated | SecretDeleted
        if name in live:
            event = SecretDeleted(id=f"d{index}", actor="alice", user="alice", name=name,
                                  secret_type="env")  # fmt: skip
            live.discard(name)
        else:
            event = SecretCreated(id=f"c{index}", actor="alice", user="alice", name=name,
                                  secret_type="env")  # fmt: skip
            live.add(name)
        state = evolve(state, event)
        assert set(state.secrets) == live
    with pytest.raises(IllegalTransition):
        evolve(state, SecretDeleted(id="x", actor="a", user="alice", name="zz", secret_type="env"))
    if live:
        again = sorted(live)[0]
        with pytest.raises(IllegalTransition):
            evolve(state, SecretCreated(id="y", actor="a", user="alice", name=again,
                                        secret_type="env"))  # fmt: skip
