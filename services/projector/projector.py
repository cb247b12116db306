"""The projector's loop: catch up, then follow the consumer group, one transaction per batch.

The log has a global stream per partition, each with the projector's consumer group: the
projector reads every partition's group (a batch of each in turn, waiting on one of them only
when none had anything), folds what it read into one engine, stores it in one transaction and
acknowledges each partition's entries on that partition's group. The checkpoints hold a
position per partition, so every step below is per partition: the delivery point, the claim of
pending entries, the dead letters.

Entries that cannot be decoded are skipped by every fold and written to the group's dead
letters (``events.keys.dead_letter_stream``) with the error, like every consumer's.

``start`` plans and catches up every build from the log (``projections.runner``: from the
memory the last clean stop kept, ``stop``, where it is still that of the checkpoint), moves the
group's delivery point to where the builds stand, and takes over every pending entry (of this
consumer's earlier life or of dead ones): each of them was folded by the catch-up, so the guard
skips it and it is acknowledged. ``step`` reads a batch from the group, folds it, stores the
rows and checkpoints in one transaction and only then acknowledges: a crash before the
transaction loses nothing (the entries stay pending and the log holds them), a crash after it
doubles nothing (the checkpoint says they are folded).

A ``Superseded`` commit (readers switched to a rebuild, or another projector wrote) starts a
new plan; builds readers left are dropped ``retire_after_s`` later, so in-flight reads finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import structlog
from redis.exceptions import RedisError

from projections.base import Projection
from projections.errors import Superseded
from projections.reader import Entry, LogReader, each
from projections.runner import REST_MS, BuildStore, Retired, Runner
from services.core.archive import ArchiveBusy
from services.projector.cooling import Cooler
from services.projector.metrics import RUNS_COOLED, RUNS_EVICTED, RUNS_RESTORED

log = structlog.get_logger("services.projector")


class GroupLog(Protocol):
    async def ensure(self) -> None: ...

    async def read(self, count: int, block_ms: int) -> Sequence[Entry]: ...

    async def claim(
        self, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, Sequence[Entry]]: ...

    async def ack(self, positions: Sequence[str]) -> None: ...

    async def advance(self, position: str) -> None: ...

    async def dead_letter(self, position: str, fields: Mapping[bytes, bytes], why: str) -> None: ...


class Projector:
    def __init__(
        self,
        store: BuildStore,
        reader: LogReader | Sequence[LogReader],
        group: GroupLog | Sequence[GroupLog],
        projections: Callable[[], list[Projection]],
        *,
        batch: int = 1000,
        page: int = 5000,
        commit_every: int = 100_000,
        claim_idle_ms: int = 30_000,
        retire_after_s: float = 60.0,
        rest_ms: int = REST_MS,
        cooler: Cooler | None = None,
        cool_every_s: float = 5.0,
    ) -> None:
        """``reader`` and ``group``: one per partition of the log, in partition order;
        ``cooler``: moves archived runs' rows out of Valkey every ``cool_every_s``."""
        self.store = store
        self.readers = each(reader)
        self.groups = list(group) if isinstance(group, Sequence) else [group]
        if len(self.groups) != len(self.readers):
            raise ValueError("one reader and one group per partition")
        self.projections = projections
        self.batch = batch
        self.page = page
        self.commit_every = commit_every
        self.claim_idle_ms = claim_idle_ms
        self.retire_after_s = retire_after_s
        self.rest_ms = rest_ms
        self.cooler = cooler
        self.cool_every_s = cool_every_s
        self.runner: Runner | None = None
        self.retiring: list[tuple[float, Retired]] = []
        self._acking: asyncio.Future[None] | None = None
        self._turn = 0  # the partition whose group a step waits on when none had anything

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # a failed ack is a redelivery: the guard skips it
            await self.flush()
        previous = self.runner
        runner = Runner(
            self.store,
            self.readers,
            self.projections(),
            page=self.page,
            commit_every=self.commit_every,
            rest_ms=self.rest_ms,
        )
        self.runner = runner
        await runner.start()
        _release_memory()
        left = list(runner.retired)
        if previous is not None:
            kept = {(b.name, b.namespace) for b in runner.engine.builds}
            left += [
                Retired(b.name, b.namespace)
                for b in previous.engine.builds
                if (b.name, b.namespace) not in kept
            ]
        due = time.monotonic() + self.retire_after_s
        self.retiring += [(due, retired) for retired in left]
        for group in self.groups:
            await group.ensure()
        await self._dead_letters()
        for group, position in zip(self.groups, runner.engine.applied, strict=True):
            await group.advance(_text(position))
        await self.reap(0)

    async def step(self, block_ms: int) -> int:
        """Fold, store and acknowledge one batch of new entries of every partition; how many
        there were. Waits up to ``block_ms`` on one partition (each in turn) if none had any."""
        read: list[tuple[int, Sequence[Entry]]] = []
        for partition, group in enumerate(self.groups):
            entries = await group.read(self.batch, 0) if len(self.groups) > 1 else ()
            if entries:
                read.append((partition, entries))
        if not read:
            self._turn = (self._turn + 1) % len(self.groups)
            entries = await self.groups[self._turn].read(self.batch, block_ms)
            if entries:
                read.append((self._turn, entries))
        if read:
            await self._process(read)
        else:
            await self.flush()
        return sum(len(entries) for _, entries in read)

    async def flush(self) -> None:
        """Wait for the last acknowledgement to be sent."""
        acking, self._acking = self._acking, None
        if acking is not None:
            await acking

    async def reap(self, min_idle_ms: int) -> int:
        """Take over entries pending for ``min_idle_ms`` (of dead consumers); fold and ack."""
        taken = 0
        for partition, group in enumerate(self.groups):
            start = "0-0"
            while True:
                start, entries = await group.claim(min_idle_ms, start, self.batch)
                if entries:
                    await self._process([(partition, entries)])
                    taken += len(entries)
                if start in ("0-0", "0") or not entries:
                    break
        return taken

    async def _process(self, read: Sequence[tuple[int, Sequence[Entry]]]) -> None:
        """Fold what was read of each partition, store it in one transaction, then ack."""
        runner = self.runner
        assert runner is not None, "start() first"
        evicted = runner.evicted
        for partition, entries in read:
            # The runs at rest it is about, back from their rows before it is folded.
            RUNS_RESTORED.inc(await runner.restore(entries))
            runner.fold(entries, partition)
        await runner.commit()
        RUNS_EVICTED.inc(runner.evicted - evicted)
        await self._dead_letters()
        # Acknowledged once stored; the next read need not wait for it (a lost ack is only a
        # redelivery, which the guard skips), but one ack at a time.
        await self.flush()
        self._acking = asyncio.ensure_future(self._ack(read))

    async def _ack(self, read: Sequence[tuple[int, Sequence[Entry]]]) -> None:
        for partition, entries in read:
            await self.groups[partition].ack([position for position, _ in entries])

    async def _dead_letters(self) -> None:
        """Entries nobody can decode go to the group's dead letters (once stored past)."""
        assert self.runner is not None
        engine = self.runner.engine
        for partition, position, fields, why in engine.undecodable:
            await self.groups[partition].dead_letter(position, fields, why)
        engine.undecodable.clear()

    async def retire_due(self, now: float) -> None:
        """Drop the builds readers left long enough ago (never one that is active again)."""
        due = [r for at, r in self.retiring if at <= now]
        self.retiring = [(at, r) for at, r in self.retiring if at > now]
        for retired in due:
            if await self.store.active(retired.name) == retired.namespace:
                continue
            dropped = await self.store.drop(retired.name, retired.namespace)
            log.info(
                "projection.dropped",
                projection=retired.name,
                namespace=retired.namespace,
                keys=dropped,
            )

    async def run(
        self, stop: asyncio.Event, *, poll_ms: int = 100, reap_every_s: float = 5.0
    ) -> None:
        """Start, then follow the log until ``stop`` is set; re-plan when superseded."""
        await self.start()
        next_reap = time.monotonic() + reap_every_s
        next_cool = time.monotonic() + self.cool_every_s
        while not stop.is_set():
            try:
                await self.step(poll_ms)
                now = time.monotonic()
                if now >= next_reap:
                    await self.reap(self.claim_idle_ms)
                    await self.retire_due(now)
                    next_reap = now + reap_every_s
                if now >= next_cool:
                    await self.cool()
                    next_cool = time.monotonic() + self.cool_every_s
            except Superseded as exc:
                if exc.what == "fenced":
                    raise  # the lease is another's: stand by, do not plan again
                log.warning("projector.superseded", what=exc.what, key=exc.key, found=exc.found)
                await self.start()
        await self.flush()
        await self.stop()

    async def cool(self) -> int:
        """One pass of the cooler, between two batches (no fold moves meanwhile); how many
        runs left Valkey."""
        if self.cooler is None or self.runner is None:
            return 0
        # Runs that came to rest long enough ago leave memory even when no batch comes.
        evicted = self.runner.engine.evict_resting(self.rest_ms)
        self.runner.evicted += evicted
        RUNS_EVICTED.inc(evicted)
        try:
            moved = await self.cooler.step(self.runner)
        except ArchiveBusy as exc:  # another projector on this host, deposed: next time
            log.warning("projection.cool_busy", error=str(exc))
            return 0
        RUNS_COOLED.inc(moved)
        return moved

    async def stop(self) -> None:
        """A clean stop, after the last commit: the folds' memory is written down at their
        checkpoints, so the next start takes it up instead of folding the log from zero."""
        if self.runner is None:
            return
        try:
            kept = await self.runner.keep_memory()
        except (RedisError, OSError) as exc:  # the next start folds from zero: nothing lost
            log.warning("projector.memory_not_kept", error=repr(exc))
            return
        log.info("projector.memory_kept", builds=kept)


def _text(position: tuple[int, int]) -> str:
    return f"{position[0]}-{position[1]}"


def _release_memory() -> None:
    """Give the catch-up's transient buffers (rendered batches) back to the system: the
    process then holds about what its folds hold. glibc only; elsewhere a no-op."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
