"""A seeded log for the API's tests: users with keys, runs of each user, a node, and the
projections rebuilt over it (what a running projector would have stored)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from events import keys
from events.identity import (
    KEY_ID_ALPHABET,
    KEY_ID_LENGTH,
    SETUP_ACTOR,
    add_user,
    fold,
    issue_key,
    new_key,
    revoke_key,
)
from events.model import AttemptQueued, NodeRegistered, Role, RunSubmitted
from events.spec import Compute, RunSpec
from projections.catalog import NAMES
from projections.rebuild import rebuild
from services.core.store import EventStore
from tests.factories import new_id

CLUSTER = "local"
ALICE, BOB, ROOT = "alice@example.com", "bob@example.com", "root@example.com"


@dataclass
class Seeded:
    keys: dict[str, str] = field(default_factory=dict)  # user -> presented key
    runs: dict[str, list[str]] = field(default_factory=dict)  # user -> run names, oldest first


def now_ms() -> int:
    return int(time.time() * 1000)


def _key_id() -> str:
    return "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


async def add_user_with_key(
    store: EventStore, name: str, role: Role, *, expires_at: int | None = None, issued_at: int = 0
) -> str:
    """Add ``name`` and issue them a key; the key as presented."""
    added = add_user(None, name, role, SETUP_ACTOR, new_id())
    await store.append([added], expected_version=0)
    key = new_key(_key_id(), secrets.token_urlsafe(32))
    issued = issue_key(
        fold([added]),
        key,
        SETUP_ACTOR,
        new_id(),
        now_ms=issued_at or now_ms(),
        expires_at=expires_at,
    )
    await store.append([issued], expected_version=1)
    return key.presented


async def revoke(store: EventStore, name: str, presented: str) -> None:
    events = [r.event for r in await store.history(f"user:{name}")]
    state = fold(events)  # type: ignore[arg-type]
    key_id = presented.removeprefix("rpk_").partition("_")[0]
    await store.append(
        [revoke_key(state, key_id, SETUP_ACTOR, new_id())], expected_version=len(events)
    )


async def submit(
    store: EventStore,
    user: str,
    base: str,
    *,
    gpus: int = 1,
    gpu_type: str | None = "a100",
    queued: bool = False,
) -> str:
    run_id = new_id()
    name = f"{base}-{run_id[:6]}"
    spec = RunSpec(
        name=base,
        image="mosaicml/pytorch:latest",
        command="echo hello",
        compute=Compute(cluster=CLUSTER, gpus=gpus, gpu_type=gpu_type),
    )
    events: list[RunSubmitted | AttemptQueued] = [
        RunSubmitted(id=new_id(), actor=user, run_id=run_id, name=name, spec=spec)
    ]
    if queued:
        events.append(
            AttemptQueued(
                id=new_id(),
                actor="scheduler@test",
                run_id=run_id,
                reason="Insufficient resources",
                position=1,
            )
        )
    await store.redis.set(keys.run_name(name), run_id)  # reserved, as a submit does
    await store.append(events, expected_version=0)
    return name


async def register_node(store: EventStore, node: str = "node-0", gpus: int = 8) -> None:
    event = NodeRegistered(
        id=new_id(), actor="node-agent@test", node=node, cluster=CLUSTER, gpu_type="a100", gpus=gpus
    )
    await store.append([event], expected_version=None)


async def seed(store: EventStore) -> Seeded:
    """alice (3 runs, one queued), bob (2 runs, one of 2 GPUs), root (admin, no runs), a node."""
    seeded = Seeded()
    roles: tuple[tuple[str, Role], ...] = ((ALICE, "user"), (BOB, "user"), (ROOT, "admin"))
    for name, role in roles:
        seeded.keys[name] = await add_user_with_key(store, name, role)
    await register_node(store)
    seeded.runs[ALICE] = [
        await submit(store, ALICE, "alpha"),
        await submit(store, ALICE, "beta", queued=True),
        await submit(store, ALICE, "gamma"),
    ]
    seeded.runs[BOB] = [
        await submit(store, BOB, "delta"),
        await submit(store, BOB, "epsilon", gpus=2),
    ]
    seeded.runs[ROOT] = []
    await rebuild(store.redis, NAMES, now_ms=now_ms())
    return seeded
