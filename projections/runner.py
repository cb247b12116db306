"""The runner: plans the builds, catches them up with the log, stores batches; and ``rebuild``.

A projection's build is named by its namespace: ``v<version>`` for the projector's own build,
``v<version>r<ms>`` for a rebuild. The active pointer names the build readers read.

``Runner.start`` plans one build per projection:
- the active build if it has the fold's version (its checkpoint says where it stands);
- otherwise a build ``v<version>`` beside the active one (from its own checkpoint, or from
  zero in a cleared namespace), which becomes active once it has caught up: readers keep
  reading the old build until then, never an empty one.
It then folds the log from position zero to its end (memory only up to each checkpoint), storing
a batch every ``commit_every`` entries, and switches the builds that caught up.

The log is read through one reader per partition (a single reader: one partition), a page of
each in turn: the folds reach the same rows whatever the interleaving of the partitions
(``projections.engine``), so any turn order will do.

Once caught up (``start``), each commit lets the runs at rest leave the memory of the folds
that allow it (``Engine.evict_resting``: their rows are stored), and ``restore`` gives them
back from those rows before a new event of theirs is folded: the memory then holds the runs
that move, not every run ever. A catch-up that folds from zero up to a stored checkpoint (a
restart with no memory to take up) reads the log once ahead for each run's last entry up to
it, and lets a run at rest go as soon as that entry is folded (``_let_go``): its rows, stored
at the checkpoint, say the rest. A run with entries on several partitions stays (they are
folded in any interleaving); a build that folded past its checkpoint lets none go.

A projector that stops cleanly writes each fold's memory down at its checkpoint, and the next
start takes it up for a build still there (``projections.resume``): the catch-up then reads the
log from the checkpoints on, not from zero.

Invariants: see ``projections.engine``. A ``Superseded`` commit (another writer, or readers
switched by a rebuild) means this runner's plan is stale: its owner starts a new one.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from events import codec
from events.model import RunSubmitted
from projections import resume
from projections.base import (
    ZERO,
    Evicting,
    Position,
    Positions,
    Projection,
    Row,
    RowKey,
    format_checkpoint,
    format_position,
    parse_position,
)
from projections.engine import Batch, Build, Engine
from projections.errors import OtherPartitions
from projections.reader import Entry, LogReader, each
from projections.storage import namespace_version

log = structlog.get_logger("projections.runner")

#: A page of one partition's entries (the partition, then its entries in order).
Page = tuple[int, Sequence[Entry]]
_SUBMITTED = codec.kinds_of({RunSubmitted})
#: A run stays in memory this long (log time) once at rest: a retry, or a restart soon after
#: the end, finds it there rather than read back.
REST_MS = 60_000
READ_AHEAD = 24  # pages: enough to go on folding while the server stores a batch
SLICE = 50  # entries folded between two turns of the event loop


class BuildStore(resume.MemoryStore, Protocol):
    async def active(self, name: str) -> str | None: ...

    async def checkpoint(self, name: str, namespace: str) -> Positions:
        """Per partition (the ones at the end that are not named stand at zero)."""
        ...

    async def commit(self, batch: Batch) -> None: ...

    async def drop(self, name: str, namespace: str) -> int: ...

    async def rows(
        self, wanted: Sequence[tuple[str, str, Sequence[RowKey]]]
    ) -> list[list[bytes | None]]:
        """For each (projection, namespace, row keys), the stored bodies (None: no such row)."""
        ...

    async def cold(self, name: str, namespace: str, runs: Sequence[str]) -> dict[str, list[Row]]:
        """The rows of ``runs`` that left the store for the cold rows (``projections.cold``),
        by run: the runs that are there."""
        ...


@dataclass(frozen=True)
class Retired:
    """A build readers no longer read; drop it once in-flight reads are done."""

    name: str
    namespace: str


class Runner:
    def __init__(
        self,
        store: BuildStore,
        reader: LogReader | Sequence[LogReader],
        projections: Sequence[Projection],
        *,
        page: int = 5000,
        commit_every: int = 100_000,
        rest_ms: int = REST_MS,
    ) -> None:
        """``reader``: one per partition of the log, in partition order. ``rest_ms``: the log
        time a run stays at rest before it leaves the folds' memory."""
        self.store = store
        self.rest_ms = rest_ms
        self.readers = each(reader)
        self.projections = list(projections)
        self.page = page
        self.commit_every = commit_every
        self.engine = Engine([])
        self.retired: list[Retired] = []
        #: Caught up: each commit lets the runs at rest go (not while folding and storing run
        #: side by side, as in the catch-up: a run must leave only as its rows say it is).
        self.evicting = False
        self.evicted = 0  # runs that left a fold's memory, over every fold
        self.restored = 0  # and came back
        self.warmed = 0  # of which from the cold rows (``projections.cold``)
        #: Builds that took their memory up (``start``): runs they let go before are away.
        self.recalled: list[str] = []

    async def start(
        self, *, namespace: Callable[[Projection], str] | None = None, serving: bool = True
    ) -> None:
        """Plan the builds and catch them up with the log; switch the ones that were behind.

        ``namespace`` forces a fresh build (a rebuild) instead of the planned one. ``serving``:
        it goes on following the log (the projector), so the runs at rest leave memory now;
        a rebuild that ends here keeps them.
        """
        builds = [await self.plan(p, namespace) for p in self.projections]
        if namespace is None:
            for build in builds:
                await self._recall(build)
        self.engine = Engine(builds, len(self.readers))
        await self.catch_up()
        for build in builds:
            if not build.active:
                build.activate = True
                if build.expect_active:
                    self.retired.append(Retired(build.name, build.expect_active))
        await self.commit()
        # Every run of the log is in memory now; those at rest leave before it serves (a
        # second or so for a million events), not a few at each of its first commits: all of
        # them, however recently they came to rest, as the log may hold runs whose rows are
        # cold (``projections.cold``), which must come back whole, not be rendered in part.
        if serving:
            self.evicted += self.engine.let_resting_go()
            self.evicting = True
        for build in builds:
            log.info(
                "projection.ready",
                projection=build.name,
                namespace=build.namespace,
                checkpoint=format_checkpoint(build.stored),
            )

    async def plan(
        self, projection: Projection, namespace: Callable[[Projection], str] | None
    ) -> Build:
        name, version = projection.name, projection.version
        active = await self.store.active(name)
        if namespace is not None:
            chosen = namespace(projection)
        elif active is not None and namespace_version(active) == version:
            chosen = active
        else:
            chosen = f"v{version}"
        stored = await self.store.checkpoint(name, chosen)
        if len(stored) > len(self.readers):
            raise OtherPartitions(name, chosen, len(stored), len(self.readers))
        if all(position == ZERO for position in stored) and chosen != active:
            await self.store.drop(name, chosen)  # leftovers of an unfinished drop or build
        log.info("projection.plan", projection=name, namespace=chosen, active=active, stored=stored)
        return Build(projection, chosen, stored=list(stored), expect_active=active or "")

    async def catch_up(self) -> None:
        """Fold the log from zero to its current end, storing a batch every so often.

        Pages are read ahead (up to ``READ_AHEAD``), a page of each partition in turn, and
        batches stored while the next pages are folded, so the server (busy for a while with a
        large batch) works on one core while the folds run on the other.
        """
        pages: asyncio.Queue[Page | Exception | None] = asyncio.Queue(READ_AHEAD)
        reading = asyncio.ensure_future(self._read_ahead(pages))
        storing: asyncio.Future[None] | None = None
        since_commit = 0
        # The folds' state only grows and holds no cycles: the cyclic collector would walk it
        # again and again (a third of a rebuild's time once; still 4 % with the state frozen
        # after every page). It runs again once caught up.
        collecting = gc.isenabled()
        gc.disable()
        last = await self._last_stored()
        from_zero = bool(last)  # some build folds from zero up to its checkpoint
        gone: set[str] = set()  # runs let go in this catch-up, their last entry folded
        warmed: set[tuple[str, str]] = set()  # (build, run) looked for in the cold rows
        away = set(self.recalled)  # builds with runs that are not in memory: their rows say
        try:
            while True:
                page = await pages.get()
                if page is None:
                    return
                if isinstance(page, BaseException):
                    raise page
                partition, entries = page
                # Positions and runs only where something may be away, cold or let go: a
                # first start or a rebuild folds every page without them.
                at = [(parse_position(p), p) for p, _ in entries] if away or from_zero else []
                runs = [codec.run_of(fields)[0] for _, fields in entries] if last else []
                await self._before_page(partition, entries, at, (away, gone, warmed), from_zero)
                feed = self.engine.feed_entry
                for start in range(0, len(entries), SLICE):
                    for position, fields in entries[start : start + SLICE]:
                        feed(position, fields, partition)
                    # Let the read-ahead and the store move on: each loop turn moves one
                    # socket buffer's worth of a page or of a batch (a page yielding only once
                    # starved them, and the folds then waited on the server).
                    await asyncio.sleep(0)
                if last:
                    away.update(self._let_go(partition, at, runs, last, gone))
                gc.freeze()  # and no later collection walks it either
                since_commit += len(entries)
                if since_commit >= self.commit_every:
                    if storing is not None:
                        await storing
                    storing = asyncio.ensure_future(self.commit())
                    since_commit = 0
        finally:
            if collecting:
                gc.enable()
            reading.cancel()
            if storing is not None:
                await storing

    async def _before_page(
        self,
        partition: int,
        entries: Sequence[Entry],
        at: Sequence[tuple[Position, str]],
        runs: tuple[set[str], set[str], set[tuple[str, str]]],
        from_zero: bool,
    ) -> None:
        """Before a page of the catch-up is folded: runs away back (``_restore_away``), and
        cold runs held written back (``_warm_held``); ``runs``: the builds with runs away, the
        runs let go, the (build, run) looked for in the cold rows."""
        away, gone, warmed = runs
        if away:
            await self._restore_away(partition, entries, at, away, gone)
        if from_zero:
            await self._warm_held(partition, entries, at, warmed)

    async def _restore_away(
        self,
        partition: int,
        entries: Sequence[Entry],
        at: Sequence[tuple[Position, str]],
        away: set[str],
        gone: set[str],
    ) -> None:
        """Before a page of the catch-up is folded: the builds with runs away (``away``) take
        back those that entries past their checkpoint are about: any run for a build that
        took its memory up, only runs let go (``gone``) for one folding from zero (the others
        it has not met yet, or folds from their start)."""
        for build in self.engine.builds:
            stored = build.stored[partition]
            if build.name in away and at[-1][0] > stored:  # the page in order: past it at all
                later = [e for e, (pos, _) in zip(entries, at, strict=True) if pos > stored]
                runs = None if build.name in self.recalled else gone
                await self.restore(later, only=(build.name,), runs=runs)

    async def _warm_held(
        self,
        partition: int,
        entries: Sequence[Entry],
        at: Sequence[tuple[Position, str]],
        warmed: set[tuple[str, str]],
    ) -> None:
        """Before a page of a catch-up from zero is folded: the runs that entries past a
        build's checkpoint are about, if cold (``projections.cold``): the fold meets them from
        their start, and their rows are written back with the next batch, which then only
        changes them (it would otherwise store what changed of a run Valkey lacks). Each
        (build, run) looked for once; a run submitted past the checkpoint is new."""
        for build in self.engine.builds:
            stored = build.stored[partition]
            if build.name in self.recalled or at[-1][0] <= stored:
                continue
            runs: set[str] = set()
            for (pos, _), (_, fields) in zip(at, entries, strict=True):
                run_id, kind = codec.run_of(fields)
                if (
                    pos > stored
                    and run_id is not None
                    and kind not in _SUBMITTED
                    and (build.name, run_id) not in warmed
                ):
                    runs.add(run_id)
            if not runs:
                continue
            warmed.update((build.name, run_id) for run_id in runs)
            for rows in (await self.store.cold(build.name, build.namespace, sorted(runs))).values():
                build.warm += rows

    async def _last_stored(self) -> dict[str, tuple[int, str] | None]:
        """For a catch-up that folds the log from zero up to a checkpoint (a restart that took
        no memory up): each run's last entry at or before the furthest checkpoint, read once
        ahead (``codec.run_of``: the run only), with its partition; None for a run with entries
        on several partitions (a user's refusal is on the user's), which stays in memory (the
        partitions are folded in any interleaving: its entries could not be said all folded).
        Empty where no build has a checkpoint to reach."""
        bound = [
            max(
                (b.stored[p] for b in self.engine.builds if b.name not in self.recalled),
                default=ZERO,
            )
            for p in range(len(self.readers))
        ]
        last: dict[str, tuple[int, str] | None] = {}
        for partition, reader in enumerate(self.readers):
            after = "0-0"
            while bound[partition] > ZERO:
                entries = await reader.read(after, self.page)
                # An archived page is read without yielding: let the lease's keeper run.
                await asyncio.sleep(0)
                for position, fields in entries:
                    if parse_position(position) > bound[partition]:
                        break
                    if (run_id := codec.run_of(fields)[0]) is not None:
                        seen = last.get(run_id, (partition, position))
                        on_one = seen is not None and seen[0] == partition
                        last[run_id] = (partition, position) if on_one else None
                else:
                    if len(entries) == self.page:
                        after = entries[-1][0]
                        continue
                break
        return last

    def _let_go(
        self,
        partition: int,
        at: Sequence[tuple[Position, str]],
        runs: Sequence[str | None],
        last: dict[str, tuple[int, str] | None],
        gone: set[str],
    ) -> set[str]:
        """After a page of the catch-up: the runs whose last entry up to the checkpoints it
        held leave the builds still folding what they stored (their rows say the rest), if at
        rest, unless the page holds a later entry of theirs; the builds that let some go."""
        done = [
            (pos, run_id)
            for (pos, position), run_id in zip(at, runs, strict=True)
            if run_id is not None and last.get(run_id) == (partition, position)
        ]
        for _, run_id in done:
            del last[run_id]  # met: what is left to meet shrinks as the catch-up goes
        if not done:
            return set()
        letting: set[str] = set()
        for build in self.engine.builds:
            fold = build.projection
            if build.beyond or build.dirty or not isinstance(fold, Evicting):
                continue
            stored = build.stored[partition]
            later = (
                {run_id for (pos, _), run_id in zip(at, runs, strict=True) if pos > stored}
                if at[-1][0] > stored  # the page in order: past the checkpoint at all
                else set()
            )
            for pos, run_id in done:
                if pos <= stored and run_id not in later and fold.let_go(run_id):
                    self.evicted += 1
                    letting.add(build.name)
                    gone.add(run_id)
        return letting

    async def _read_ahead(self, pages: asyncio.Queue[Page | Exception | None]) -> None:
        """A page of each partition in turn, until each one's end; then None."""
        # From where the builds stand: zero, unless every build took its memory up.
        after = [
            format_position(min(build.applied[p] for build in self.engine.builds))
            if self.engine.builds
            else "0-0"
            for p in range(len(self.readers))
        ]
        reading = list(range(len(self.readers)))
        while reading:
            for partition in list(reading):
                try:
                    entries = await self.readers[partition].read(after[partition], self.page)
                except Exception as exc:  # noqa: BLE001 - handed over: the folding loop raises it
                    await pages.put(exc)
                    return
                if entries:
                    await pages.put((partition, entries))
                    after[partition] = entries[-1][0]
                if len(entries) < self.page:
                    reading.remove(partition)
        await pages.put(None)

    async def _recall(self, build: Build) -> None:
        """Take up the memory the build's fold kept at its checkpoint, if it is that one's."""
        if await resume.recall(self.store, build):
            self.recalled.append(build.name)

    async def keep_memory(self) -> int:
        """Write down the memory of each build with nothing left to store (a clean stop, after
        the last commit), for the next start; how many."""
        return await resume.keep(self.store, self.engine.stored_all())

    async def process(self, entries: Sequence[Entry], partition: int = 0) -> None:
        """Fold ``entries`` of ``partition`` (the guard skips what is folded already) and store
        the batch."""
        await self.restore(entries)
        self.fold(entries, partition)
        await self.commit()

    def fold(self, entries: Sequence[Entry], partition: int) -> None:
        """Fold ``entries`` of ``partition`` (the guard skips what is folded already)."""
        feed = self.engine.feed_entry
        for position, fields in entries:
            feed(position, fields, partition)

    async def commit(self) -> None:
        batch = self.engine.batch()
        if batch is not None:
            await self.store.commit(batch)
            self.engine.committed(batch)
        if self.evicting:
            self.evicted += self.engine.evict_resting(self.rest_ms)

    async def restore(
        self,
        entries: Sequence[Entry],
        only: Collection[str] | None = None,
        runs: Collection[str] | None = None,
    ) -> int:
        """Give the runs ``entries`` are about back to the folds that let them go, from their
        stored rows, before the entries are folded; how many (run, fold) came back. ``only``:
        those builds (by name). ``runs``: those runs only (in a catch-up from zero, the ones let
        go: every other run is the fold's to see from its start)."""
        if not self.evicted and not self.recalled:
            return 0
        about: set[str] = set()
        new: set[str] = set()  # submitted in these entries: nothing to give back
        for _, fields in entries:
            run_id, kind = codec.run_of(fields)
            if run_id is None or run_id in about or (runs is not None and run_id not in runs):
                continue
            (new if kind in _SUBMITTED else about).add(run_id)
        about -= new
        away = [
            (build, fold, run_id)
            for build in self.engine.builds
            if (only is None or build.name in only)
            and isinstance(fold := build.projection, Evicting)
            for run_id in about
            if not fold.holds(run_id)
        ]
        found: list[dict[RowKey, bytes | None]] = [{} for _ in away]
        while asks := [
            (i, wanted)
            for i, (_, fold, run_id) in enumerate(away)
            if (wanted := fold.restoring(run_id, found[i]))
        ]:
            asked = [(away[i][0].name, away[i][0].namespace, row_keys) for i, row_keys in asks]
            for (i, row_keys), bodies in zip(asks, await self.store.rows(asked), strict=True):
                found[i].update(zip(row_keys, bodies, strict=True))
        restored = 0
        cold: dict[str, list[str]] = {}  # build -> runs not in Valkey: maybe in the cold rows
        for (build, fold, run_id), stored in zip(away, found, strict=True):
            fold.restore(run_id, stored)
            if fold.holds(run_id):
                restored += 1
            else:
                cold.setdefault(build.name, []).append(run_id)
        restored += await self._warm(cold)
        self.restored += restored
        return restored

    async def _warm(self, runs: Mapping[str, Sequence[str]]) -> int:
        """Give back the runs (by build) that left Valkey for the cold rows, and have their
        rows written back, as they were, with the next batch; how many (run, fold) came
        back."""
        warmed = 0
        for build in self.engine.builds:
            fold = build.projection
            if build.name not in runs or not isinstance(fold, Evicting):
                continue
            found = await self.store.cold(build.name, build.namespace, runs[build.name])
            for run_id, rows in found.items():
                fold.restore(run_id, {(row.kind, row.id): row.body for row in rows})
                if fold.holds(run_id):
                    build.warm += rows
                    warmed += 1
        self.warmed += warmed
        return warmed
