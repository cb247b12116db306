"""The keyring's rotation (``cli.rotation``) on a real server: every sealed value ends under the
new key and still opens, the old keys are dropped once no value uses them, a value of no live
secret is removed, a rotation cut short loses nothing and a second run finishes it, and a value
that does not open is left alone and named."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from cli.rotation import rotate
from events import secrets
from events.identity import SETUP_ACTOR
from events.model import UserAdded
from events.secrets import Secret
from services.core import sealing
from services.core.client import connect
from services.core.secretstore import SecretValues
from services.core.settings import Settings
from services.core.store import EventStore
from services.node_agent.secrets import run_secrets

VALUE = "value-that-must-survive-rotation"


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield store
    await store.close()


def env(name: str, key: str = "TOKEN") -> Secret:
    return Secret(
        name=name, secret_type="env", metadata={"key": key}, value={"value": f"{VALUE}-{name}"}
    )


async def created(store: EventStore, keyring: sealing.Keyring, owner: str, secret: Secret) -> str:
    """``secret`` of ``owner`` as the API makes it: its event, then its sealed value."""
    history = await store.history(f"user:{owner}")
    if not history:
        added = UserAdded(id=uuid.uuid4().hex, actor=SETUP_ACTOR, user=owner, role="user")
        await store.append([added], expected_version=0)
        history = await store.history(f"user:{owner}")
    event = secrets.create(owner, {}, secret, owner, uuid.uuid4().hex)
    await store.append([event], expected_version=len(history))
    await SecretValues(store.redis).put(
        owner, secret.name, sealing.seal(keyring, owner, secret, event.id)
    )
    return event.id


async def opened(values: SecretValues, keyring: sealing.Keyring) -> dict[tuple[str, str], str]:
    found = {}
    async for owner in values.owners():
        for name, data in (await values.all(owner)).items():
            secret, _ = sealing.unseal(keyring, owner, name, data)
            found[(owner, name)] = secret.value["value"]
    return found


async def test_rotation_reseals_every_value_and_drops_the_old_key(
    store: EventStore, tmp_path: Path
) -> None:
    path = sealing.provision(tmp_path)
    first = sealing.load_keyring(path)
    values = SecretValues(store.redis)
    for owner, name in [("alice", "a1"), ("alice", "a2"), ("bob", "b1")]:
        await created(store, first, owner, env(name, key=name.upper()))
    before = await opened(values, first)

    rotated = await rotate(store, path)

    after = sealing.load_keyring(path)
    assert after.ids == [rotated.new_key]
    assert rotated.dropped == first.ids
    assert (rotated.resealed, rotated.values, rotated.removed) == (3, 3, 0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await opened(values, after) == before
    async for owner in values.owners():
        for data in (await values.all(owner)).values():
            assert sealing.peek(data).key_id == rotated.new_key
            assert VALUE.encode() not in data


async def test_a_rotation_cut_short_loses_nothing_and_a_second_run_finishes_it(
    store: EventStore, tmp_path: Path
) -> None:
    path = sealing.provision(tmp_path)
    first = sealing.load_keyring(path)
    values = SecretValues(store.redis)
    await created(store, first, "alice", env("a1", "A1"))
    await created(store, first, "alice", env("a2", "A2"))
    before = await opened(values, first)
    # Killed after step 1 and half of step 2: a new key in the file, one value under it.
    both = first.adding(*sealing.draw_key())
    sealing.write_keyring(path, both)
    data = await values.get("alice", "a1")
    assert data is not None
    again = sealing.reseal(both, "alice", "a1", data)
    assert again is not None
    assert await values.replace("alice", "a1", data, again)
    assert await opened(values, sealing.load_keyring(path)) == before  # all still open

    rotated = await rotate(store, path)

    assert sealing.load_keyring(path).ids == [rotated.new_key]
    assert set(rotated.dropped) == set(both.ids)
    assert await opened(values, sealing.load_keyring(path)) == before


async def test_a_value_of_no_live_secret_is_removed(store: EventStore, tmp_path: Path) -> None:
    path = sealing.provision(tmp_path)
    keyring = sealing.load_keyring(path)
    values = SecretValues(store.redis)
    live_id = await created(store, keyring, "alice", env("kept", "KEPT"))
    # A crash between a value's write and its event: a value no event names.
    orphan = env("orphan", "ORPHAN")
    await values.put("alice", "orphan", sealing.seal(keyring, "alice", orphan, "never-appended"))
    # A value under a live name but another secret's id (left by one deleted meanwhile).
    stale = sealing.seal(keyring, "alice", env("kept", "KEPT"), "an-older-id")
    await values.put("bob", "kept", stale)

    rotated = await rotate(store, path)

    assert rotated.removed == 2
    assert sorted(await values.all("alice")) == ["kept"]
    assert await values.all("bob") == {}
    data = await values.get("alice", "kept")
    assert data is not None
    assert sealing.peek(data).secret_id == live_id


async def test_a_value_that_does_not_open_is_named_and_left_as_it_is(
    store: EventStore, tmp_path: Path
) -> None:
    path = sealing.provision(tmp_path)
    keyring = sealing.load_keyring(path)
    values = SecretValues(store.redis)
    await created(store, keyring, "alice", env("good", "GOOD"))
    await created(store, keyring, "alice", env("bad", "BAD"))
    data = await values.get("alice", "bad")
    assert data is not None
    info = sealing.peek(data)
    tampered = msgspec.structs.replace(info, ciphertext="A" + info.ciphertext[1:]).encode()
    await values.put("alice", "bad", tampered)

    rotated = await rotate(store, path)

    assert rotated.refused == ["bad of alice"]
    assert await values.get("alice", "bad") == tampered
    # The key it names is kept, so nothing that did open before stops opening.
    assert info.key_id in sealing.load_keyring(path).ids
    with pytest.raises(sealing.Tampered, match="secret bad of alice does not decrypt"):
        sealing.unseal(sealing.load_keyring(path), "alice", "bad", tampered)


async def test_a_node_that_read_the_keyring_before_a_rotation_opens_values_after_it(
    store: EventStore, tmp_path: Path
) -> None:
    path = sealing.provision(tmp_path)
    await created(store, sealing.load_keyring(path), "alice", env("a1", "A1"))
    node = sealing.KeyringFile(path)
    node.current()  # read before the rotation, as a running node-agent has it
    await rotate(store, path)
    found = await run_secrets(SecretValues(store.redis), "alice", node)
    assert found.environment()["A1"] == f"{VALUE}-a1"


def test_the_operators_command_rotates_the_keyring_it_is_given(
    redis_url: str, tmp_path: Path
) -> None:
    path = sealing.provision(tmp_path)
    before = sealing.load_keyring(path).ids
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPLANE_", "MOSAICML_"))}
    env |= {"RUNPLANE_REDIS_URL": redis_url, "RUNPLANE_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "admin", "secrets", "rotate-key", "--keyring",
         str(path)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    after = sealing.load_keyring(path).ids
    assert len(after) == 1
    assert after != before
    assert f"new key {after[0]}" in done.stdout
    assert f"keys dropped: {before[0]}" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "cli.main", "admin", "secrets", "rotate-key", "--keyring",
         str(tmp_path / "nope.json")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "cannot read the secrets keyring" in missing.stderr
