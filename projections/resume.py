"""A projector's memory across a clean stop: each fold's state written down at its build's
checkpoint (``keep``), taken up by the next start for a build still at that checkpoint
(``recall``). The memory names the checkpoint, the fold's name and version, and the shape of
what it holds (``projections.base.memory_form``): anything else (a crash, a commit since, a
fold that changed) is a catch-up from zero (``projections.runner``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import msgspec
import structlog

from projections.base import (
    Resumable,
    format_checkpoint,
    memory_form,
    memory_of,
    recall_into,
)
from projections.engine import Build

log = structlog.get_logger("projections.runner")


class MemoryStore(Protocol):
    async def memory(self, name: str, namespace: str) -> bytes | None: ...

    async def keep_memory(self, name: str, namespace: str, memory: bytes | None) -> None: ...


class _Kept(msgspec.Struct, frozen=True):
    """A build's memory as kept: where it stands, which fold, and the fold's own bytes."""

    checkpoint: str
    name: str
    version: int
    form: str  # ``memory_form``: a fold whose memory changed shape takes none up
    memory: bytes


async def recall(store: MemoryStore, build: Build) -> bool:
    """Take up the memory the build's fold kept at its checkpoint, if it is that one's: True
    if it did (the build then stands at its checkpoint)."""
    fold = build.projection
    kept = await store.memory(build.name, build.namespace)
    if kept is None or not isinstance(fold, Resumable):
        return False
    await store.keep_memory(build.name, build.namespace, None)  # taken: stale soon
    checkpoint = format_checkpoint(build.stored)
    try:
        memory = msgspec.msgpack.decode(kept, type=_Kept)
        if (memory.checkpoint, memory.name, memory.version, memory.form) != (
            checkpoint,
            fold.name,
            fold.version,
            memory_form(fold),
        ):
            log.info("projection.memory_stale", projection=build.name, kept=memory.checkpoint)
            return False
        recall_into(fold, memory.memory)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("projection.memory_unreadable", projection=build.name, error=str(exc))
        return False
    build.applied = list(build.stored)
    log.info("projection.memory_taken_up", projection=build.name, checkpoint=checkpoint)
    return True


async def keep(store: MemoryStore, builds: Iterable[Build]) -> int:
    """Write down the memory of each of ``builds`` (each with nothing left to store: a clean
    stop, after the last commit) for the next start; how many."""
    kept = 0
    for build in builds:
        fold = build.projection
        if not isinstance(fold, Resumable):
            continue
        memory = _Kept(
            checkpoint=format_checkpoint(build.stored),
            name=fold.name,
            version=fold.version,
            form=memory_form(fold),
            memory=memory_of(fold),
        )
        await store.keep_memory(build.name, build.namespace, msgspec.msgpack.encode(memory))
        kept += 1
    return kept
