"""The projector's cooler: the rows of archived runs leave Valkey for the cold rows.

Every ``RUNPLANE_PROJECTOR_COOL_EVERY_S`` the active projector looks at the oldest runs of the
``run_status`` build readers read (its ``created`` index, a cursor going round), keeps those
whose history the archiver retired (their streams went: at rest, every event in the archive),
and moves their rows in every build to a segment in ``<event archive>/rows``
(``projections.cooling``, ``projections.cold``). Cooled runs leave the index, so what it
looks at is the runs still in Valkey: the live ones and the ones still to cool.

A segment is written to a temporary file, fsynced, renamed (a name of its own, never reused)
and listed in the manifest, which is written the same way; only then do the rows leave Valkey,
fenced by the projector's lease. A file the manifest does not list is a crash's leftover and
is deleted by the next pass. One cooler writes a directory at a time (a lock on this host).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
import structlog

from events import keys
from events.bloom import bloom
from events.model import run_aggregate
from projections import cold, run_status
from projections.cold import Placed
from projections.cooling import cool
from projections.runner import Runner
from projections.storage import RedisStore
from services.core.archive import MANIFEST, locked, pointer
from services.core.durable import atomically, delete_unlisted

log = structlog.get_logger("services.projector")
ROWS = "rows"


class Cooler:
    def __init__(
        self, client: aioredis.Redis, store: RedisStore, partitions: int, *, runs: int = 1000
    ) -> None:
        """``runs``: looked at per pass."""
        self.client = client
        self.store = store
        self.partitions = partitions
        self.runs = runs
        self._after: tuple[float, bytes] | None = None  # the cursor: score, member
        # One thread writes and merges every segment, one pass at a time; what a pass used is
        # given back at its end (``segments.release_memory``, and the allocator the projector
        # gives Arrow: ``services.core.imports.lean_arrow``).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cooler")
        self._told = False

    async def step(self, runner: Runner) -> int:
        """One pass: up to ``runs`` of the oldest runs looked at; how many left Valkey."""
        found = await pointer(self.client, 0)
        if found is None:
            return 0  # nothing archived, so nothing retired
        if not (Path(found.dir) / MANIFEST).exists():
            if not self._told:
                log.warning("projection.cold_unreachable", archive=found.dir)
                self._told = True
            return 0
        statuses = next((b for b in runner.engine.builds if b.name == "run_status"), None)
        if statuses is None or not statuses.active:
            return 0
        looked = await self._oldest(
            keys.projection_index("run_status", statuses.namespace, "created")
        )
        retired = await self._retired(looked)
        if not retired:
            return 0
        root = Path(found.dir) / ROWS
        root.mkdir(exist_ok=True)

        named: list[tuple[str, str]] = []

        async def write(placed: list[Placed]) -> None:
            await asyncio.get_running_loop().run_in_executor(self._writer, _write, root, placed)
            await self.client.set(keys.cold_rows(), str(root))  # before any run leaves Valkey
            named.extend(_names(placed))

        with locked(root):
            moved = await cool(runner, self.store, retired, write)
            # The API finds a cold run's name in the cold rows from now on (a run that stayed,
            # moved meanwhile, has its name row in Valkey): its reservation may go.
            forgotten = await self.store.forget_names(named)
        if moved:
            log.info("projection.cooled", runs=moved, looked_at=len(looked), names=forgotten)
        return moved

    async def _oldest(self, index: str) -> list[str]:
        """The next ``runs`` runs of ``index`` after the cursor, oldest first (from the start
        again once it reached the end)."""
        low = "-inf" if self._after is None else self._after[0]
        got = cast(
            list[tuple[bytes, float]],
            await self.client.zrangebyscore(
                index, low, "+inf", start=0, num=self.runs + 1, withscores=True
            ),
        )
        if self._after is not None:  # ties on the cursor's score: those after its member
            score, member = self._after
            got = [(m, s) for m, s in got if s > score or m > member]
        got = got[: self.runs]
        self._after = (got[-1][1], got[-1][0]) if len(got) == self.runs else None
        return [member.decode() for member, _ in got]

    async def _retired(self, runs: Sequence[str]) -> list[str]:
        """Of ``runs``, those whose history went to the archive: a run the projection holds had
        a stream, and only the archiver deletes one (``services.core.archiver.retire_runs``)."""
        pipe = self.client.pipeline(transaction=False)
        for run in runs:
            aggregate = run_aggregate(run)
            pipe.exists(
                keys.aggregate_stream(aggregate, keys.partition_of(aggregate, self.partitions))
            )
        found = await pipe.execute()
        return [run for run, there in zip(runs, found, strict=True) if not there]


def _names(placed: list[Placed]) -> list[tuple[str, str]]:
    """The (name, run id) of each run whose ``run_status`` name row is in ``placed``."""
    return [
        (row.id, run)
        for projection, _, run, row in placed
        if projection == "run_status" and row.kind == run_status.NAME_KIND
    ]


#: The most runs a segment gets by merging. A point lookup reads the columns it filters on of
#: a whole segment, and a merge costs the projector memory it keeps (merging up to 4,096 runs
#: held its RSS about 80 MiB higher, ``bench.soak``): a pass of a busy cluster cools about this
#: many, and then merges nothing; a quiet one's small passes still end in few segments.
MERGED_RUNS = 1024
#: Rows a merge holds in memory at once: it streams the older segment through, a batch at a
#: time, and keeps only the newer's runs whole (their keys).
_BATCH_ROWS = 8192


def _write(root: Path, placed: list[Placed]) -> None:
    """A segment of ``placed``, durable and listed in the manifest; then the newest segments
    merged while the older of the two holds no more runs than the newer (up to
    ``MERGED_RUNS``): a lookup opens a segment per power of two of the runs, at most, and a
    listing or a report reads about ``runs / MERGED_RUNS`` of them, not one per pass."""
    from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

    forget_unlisted(root)
    listed = cold.Manifest(list(cold.manifest(root, missing_ok=True).segments))
    name = _name(listed)
    data = cold.table(placed)
    atomically(root / name, partial(segments.write, data))
    listed.segments.append(_Held.of([data]).segment(name))
    while (
        len(listed.segments) >= 2
        and listed.segments[-2].runs <= listed.segments[-1].runs
        and listed.segments[-2].runs + listed.segments[-1].runs <= MERGED_RUNS
    ):
        older, newer = listed.segments[-2:]
        name, held = _name(listed), _Held()
        atomically(root / name, partial(_merge, root / older.path, root / newer.path, held))
        listed.segments[-2:] = [held.segment(name)]
    encoded = msgspec.json.encode(listed)
    atomically(root / cold.MANIFEST, lambda tmp: Path(tmp).write_bytes(encoded))
    forget_unlisted(root)  # the merged ones
    segments.release_memory()


def _name(listed: cold.Manifest) -> str:
    return f"{len(listed.segments):08d}-{uuid.uuid4().hex[:8]}.parquet"


class _Held:
    """What a segment holds, for its manifest entry: gathered as its rows are written."""

    def __init__(self) -> None:
        self.runs: set[str] = set()
        self.names: set[str] = set()
        self.oldest: int | None = None
        self.newest: int | None = None
        self.rows = 0

    @classmethod
    def of(cls, parts: Any) -> _Held:
        held = cls()
        for part in parts:
            held.add(part)
        return held

    def add(self, part: Any) -> None:
        """Take in a table or batch of ``cold.table``'s shape (in Arrow: a merge reads tens of
        thousands of rows, and a Python object for each would stay in the process's heap)."""
        import pyarrow.compute as pc  # noqa: PLC0415 - pyarrow only where it is used

        self.rows += part.num_rows
        self.runs.update(pc.unique(part.column("run")).to_pylist())
        kind = part.column("kind")
        self.names.update(part.filter(pc.equal(kind, "name")).column("id").to_pylist())
        listing = pc.and_(pc.equal(part.column("projection"), "run_status"), pc.equal(kind, "run"))
        created = part.filter(listing).column("created")
        if created.null_count < len(created):
            low, high = (bound.as_py() for bound in pc.min_max(created).values())
            self.oldest = low if self.oldest is None else min(low, self.oldest)
            self.newest = high if self.newest is None else max(high, self.newest)

    def segment(self, name: str) -> cold.Segment:
        return cold.Segment(
            name,
            len(self.runs),
            self.rows,
            bloom(self.runs | self.names),
            oldest=self.oldest,
            newest=self.newest,
        )


def _merge(older: Path, newer: Path, held: _Held, out: str) -> None:
    """Two segments as one, at ``out``: each run in each build from the newer where it holds
    it (the older's copy is stale, ``projections.cold``); streamed, a batch at a time, what it
    holds gathered in ``held``."""
    import pyarrow.compute as pc  # noqa: PLC0415 - pyarrow only where it is used
    import pyarrow.parquet as pq  # noqa: PLC0415

    def built(data: Any) -> Any:
        columns = [data.column(c) for c in ("projection", "namespace", "run")]
        return pc.binary_join_element_wise(*columns, "\x1f")

    kept = pc.unique(built(pq.read_table(newer, columns=["projection", "namespace", "run"])))
    first, second = pq.ParquetFile(older), pq.ParquetFile(newer)
    with pq.ParquetWriter(out, first.schema_arrow, compression="zstd") as writer:
        for batch in first.iter_batches(batch_size=_BATCH_ROWS):
            fresh = batch.filter(pc.invert(pc.is_in(built(batch), value_set=kept)))
            writer.write_batch(fresh)
            held.add(fresh)
        for batch in second.iter_batches(batch_size=_BATCH_ROWS):
            writer.write_batch(batch)
            held.add(batch)


def forget_unlisted(root: Path) -> list[Path]:
    """Delete the segment files the manifest does not list (a crash's leftovers)."""
    listed = {root / s.path for s in cold.manifest(root, missing_ok=True).segments}
    return delete_unlisted([*root.glob("*.parquet"), *root.glob(".*.tmp")], listed)
