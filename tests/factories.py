"""Small builders of events for tests: realistic values, fresh ids."""

from __future__ import annotations

import uuid

from events.model import AttemptQueued, RunSubmitted, UpdateRequested
from events.spec import Compute, RunSpec


def new_id() -> str:
    return uuid.uuid4().hex


def spec(name: str = "hello", gpus: int = 1, nodes: int | None = None) -> RunSpec:
    return RunSpec(
        name=name,
        image="mosaicml/pytorch:latest",
        command="echo hello",
        compute=Compute(cluster="local", gpus=gpus, nodes=nodes),
    )


def submitted(run_id: str | None = None, user: str = "alice@example.com") -> RunSubmitted:
    run_id = run_id or new_id()
    return RunSubmitted(
        id=new_id(), actor=user, run_id=run_id, name=f"hello-{run_id[:6]}", spec=spec()
    )


def queued(run_id: str, attempt: int = 0, position: int = 1) -> AttemptQueued:
    return AttemptQueued(
        id=new_id(),
        actor="scheduler@test",
        run_id=run_id,
        attempt=attempt,
        reason="Insufficient resources",
        position=position,
    )


def updated(run_id: str, max_retries: int, actor: str = "alice@example.com") -> UpdateRequested:
    return UpdateRequested(id=new_id(), actor=actor, run_id=run_id, max_retries=max_retries)
