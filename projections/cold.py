"""Cold rows: the projection rows of archived runs, out of Valkey, in Parquet segments.

Once the archiver retired a run's history (its stream went to the archive) and the projector
let the run go, the projector moves every row of the run, in every build readers read, to a
segment here and only then deletes them from Valkey (``services.projector.cooling``). Valkey
then holds the runs that may still move, not every run ever.

Layout of the directory (``<event archive>/rows``, named by ``events.keys.cold_rows``)::

    manifest.json                 the segments, oldest first (rewritten atomically)
    <n>.parquet                   one pass's rows: a row per stored row, with its memberships

Invariants:
- A run is cold in a build exactly when none of its ``anchors`` is in the build in Valkey: the
  cooler deletes all of a run's rows in every build at once (``runplane_cool``; a build that
  lacks the run's anchors already is left as it is), and a run that comes back has all of its
  rows written back with that build's next batch (``projections.runner``). A reader therefore
  reads Valkey first and takes a run from here only if the build lacks its anchors.
- A run cooled twice (it came back, then rested again) is in two segments: the later one is
  the run as it is. Readers take a run's rows in a build from the latest segment that holds
  the run in that build (a new build of a fold, a new version, holds every run in Valkey
  until the run is cooled again; the others keep their copies).
- A segment the manifest does not list is a crashed pass's leftover: never read.

pyarrow is imported only where a segment is written or read (``services.core.imports``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from events.bloom import may_hold
from projections.base import Row, RowKey

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST = "manifest.json"
#: Per projection, the rows of a run one of which it holds from the run's submission on
#: (deleted or not) while it holds the run: none of them in a build in Valkey says the run is
#: cold there (or unknown). A run that came back is warm again, maybe with a stale copy here.
_ANCHORS: dict[str, tuple[tuple[str, str], ...]] = {
    "run_status": (("run", "{}"),),
    "attempts": (("attempt", "{}:0"),),
    "billing": (("run", "{}"),),
    "audit": (("entry", "{}#0"),),
    "utilization": (("done", "{}"), ("queued", "{}"), ("active", "{}")),  # at rest, or not
}


def anchors(projection: str, run_id: str) -> list[RowKey]:
    """The rows of ``run_id`` none of which the build holds when the run is cold there."""
    return [(kind, form.format(run_id)) for kind, form in _ANCHORS[projection]]


#: What the Parquet columns hold, in order.
COLUMNS = ("projection", "namespace", "run", "kind", "id", "body", "index", "created")
#: A stored row of a run, with where it is kept: (projection, namespace, run, row).
Placed = tuple[str, str, str, Row]


class Segment(msgspec.Struct, frozen=True):
    path: str  # relative to the directory
    runs: int
    rows: int
    #: A Bloom filter of its runs and of its ``name`` rows' ids (``bloom``): a lookup of one
    #: run opens only the segments that may hold it. Empty: open it.
    bloom: bytes = b""
    #: The least and greatest ``created`` of its ``run_status`` runs (None: none, or not
    #: known): a listing reads the segments of the newest runs first, and no more than needed.
    oldest: int | None = None
    newest: int | None = None

    def may_hold(self, item: str) -> bool:
        return may_hold(self.bloom, item)


class Manifest(msgspec.Struct):
    segments: list[Segment] = msgspec.field(default_factory=list)


class ColdRowsMissing(Exception):
    """The cold rows' directory cannot be read on this host: the runs in it would be missing
    from every listing and report, so nothing is read."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            f"the rows of archived runs are in {root}, and {root / MANIFEST} cannot be read "
            "here: mount the event archive at that path"
        )
        self.root = root


#: The last manifest read per directory, with the file's identity then: a manifest is only
#: ever replaced (renamed over), so an unchanged one is not decoded again.
_read: dict[Path, tuple[tuple[int, int, int], Manifest]] = {}


def manifest(root: Path, *, missing_ok: bool = False) -> Manifest:
    """The directory's manifest; an empty one where it has none and ``missing_ok`` (else
    ``ColdRowsMissing``: readers are sent here only once a segment is listed)."""
    path = root / MANIFEST
    try:
        stat = path.stat()
    except FileNotFoundError:
        if missing_ok:
            return Manifest()
        raise ColdRowsMissing(root) from None
    seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    kept = _read.get(root)
    if kept is not None and kept[0] == seen:
        return kept[1]
    found = msgspec.json.decode(path.read_bytes(), type=Manifest)
    _read[root] = (seen, found)
    return found


def table(placed: Collection[Placed]) -> pa.Table:
    """The rows of one pass as a segment's table (``created``: a run row's place in the
    ``created`` index, for listings)."""
    import pyarrow as pa  # noqa: PLC0415 - pyarrow only where it is used

    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for projection, namespace, run, row in placed:
        columns["projection"].append(projection)
        columns["namespace"].append(namespace)
        columns["run"].append(run)
        columns["kind"].append(row.kind)
        columns["id"].append(row.id)
        columns["body"].append(row.body)
        columns["index"].append([{"name": n, "score": s} for n, s in row.index])
        columns["created"].append(dict(row.index).get("created"))
    return pa.table(columns, schema=_schema())


def _schema() -> pa.Schema:
    import pyarrow as pa  # noqa: PLC0415 - pyarrow only where it is used

    membership = pa.struct([("name", pa.string()), ("score", pa.int64())])
    return pa.schema(
        [
            ("projection", pa.string()),
            ("namespace", pa.string()),
            ("run", pa.string()),
            ("kind", pa.string()),
            ("id", pa.string()),
            ("body", pa.binary()),
            ("index", pa.list_(membership)),
            ("created", pa.int64()),
        ]
    )


class ColdRows:
    """The cold rows of one directory, read newest segment first, each run from the latest
    segment that holds it in the build asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def runs(self, projection: str, namespace: str, runs: Collection[str]) -> dict[str, list[Row]]:
        """The rows of each of ``runs`` that is here (the others are not in the result): the
        segments whose Bloom filter may hold one still sought are opened, newest first."""
        import pyarrow.compute as pc  # noqa: PLC0415 - pyarrow only where it is used
        import pyarrow.parquet as pq  # noqa: PLC0415

        sought = set(runs)
        found: dict[str, list[Row]] = {}
        build = (pc.field("projection") == projection) & (pc.field("namespace") == namespace)
        for segment in reversed(manifest(self.root).segments):
            maybe = sorted(run for run in sought if segment.may_hold(run))
            if not maybe:
                continue
            where = build & pc.field("run").isin(maybe)
            for item in pq.read_table(self.root / segment.path, filters=where).to_pylist():
                found.setdefault(item["run"], []).append(_row(item))
            sought -= found.keys()
            if not sought:
                break
        return found

    def of_kind(self, projection: str, namespace: str, kind: str) -> dict[str, list[Row]]:
        """Every cold run's rows of ``kind``, by run."""
        found: dict[str, list[Row]] = {}
        for run, row in self._rows(projection, namespace, lambda pc: pc.field("kind") == kind):
            found.setdefault(run, []).append(row)
        return found

    def named(self, namespace: str, name: str) -> str | None:
        """The run named ``name`` among ``run_status``'s cold runs (its ``name`` row), or None;
        the segments whose Bloom filter may hold the name are opened, newest first."""
        import pyarrow.compute as pc  # noqa: PLC0415 - pyarrow only where it is used
        import pyarrow.parquet as pq  # noqa: PLC0415

        where = (
            (pc.field("projection") == "run_status")
            & (pc.field("namespace") == namespace)
            & (pc.field("kind") == "name")
            & (pc.field("id") == name)
        )
        for segment in reversed(manifest(self.root).segments):
            if segment.may_hold(name):
                found = pq.read_table(self.root / segment.path, columns=["run"], filters=where)
                if found.num_rows:
                    return str(found.column("run")[0].as_py())
        return None

    def created(
        self, namespace: str, low: float, high: float, want: int | None = None
    ) -> list[tuple[int, str]]:
        """The cold ``run_status`` runs created in [low, high]: (created, run), newest first,
        ties by run descending (``query.list_runs``'s order); their rows: ``runs``. ``want``:
        the newest that many at least, where there are (None: all): the segments of the
        newest runs are read first, and no further than that."""
        import pyarrow.compute as pc  # noqa: PLC0415 - pyarrow only where it is used
        import pyarrow.parquet as pq  # noqa: PLC0415

        build = (pc.field("projection") == "run_status") & (pc.field("namespace") == namespace)
        where = build & (pc.field("kind") == "run") & pc.field("created").is_valid()
        if low != float("-inf"):
            where &= pc.field("created") >= int(low)
        if high != float("inf"):
            where &= pc.field("created") <= int(high)
        listed = manifest(self.root).segments
        unknown = float("inf")  # a segment that does not say what it holds: read it first
        order = sorted(range(len(listed)), key=lambda n: _newest(listed[n], unknown), reverse=True)
        later = _Later(self.root, listed, build)
        found: list[tuple[int, str]] = []
        for n in order:
            segment = listed[n]
            if segment.newest is not None and segment.oldest is not None:
                if segment.newest < low or segment.oldest > high:
                    continue
                enough = want is not None and len(found) >= want
                if enough and segment.newest < sorted(found, reverse=True)[(want or 1) - 1][0]:
                    break  # every segment after it in this order holds older runs only
            data = pq.read_table(
                self.root / segment.path, columns=["run", "created"], filters=where
            ).to_pydict()
            found += [
                (created, run)
                for run, created in zip(data["run"], data["created"], strict=True)
                if not later.holds(n, run)
            ]
        return sorted(found, reverse=True)

    def members(
        self, projection: str, namespace: str, index: str, low: float, high: float
    ) -> list[tuple[int, Row]]:
        """The rows in ``index`` with a score in [low, high): (score, row)."""
        found = []
        for _, row in self._rows(projection, namespace, None):
            score = dict(row.index).get(index)
            if score is not None and low <= score < high:
                found.append((score, row))
        return found

    def _rows(
        self, projection: str, namespace: str, where: Callable[[Any], Any] | None
    ) -> Iterator[tuple[str, Row]]:
        """(run, row) of the build's runs that ``where`` selects (built from
        ``pyarrow.compute``), each run's from the latest segment holding it."""
        import pyarrow.compute as pc  # noqa: PLC0415 - pyarrow only where it is used
        import pyarrow.parquet as pq  # noqa: PLC0415

        build = (pc.field("projection") == projection) & (pc.field("namespace") == namespace)
        seen: set[str] = set()  # runs of later segments: their rows here are stale
        for segment in reversed(manifest(self.root).segments):
            data = pq.read_table(self.root / segment.path, filters=build)  # the file read once
            selected = data if where is None else data.filter(where(pc))
            for item in selected.to_pylist():
                if item["run"] in seen:
                    continue
                yield item["run"], _row(item)
            seen.update(data.column("run").unique().to_pylist())


def _newest(segment: Segment, unknown: float) -> float:
    return unknown if segment.newest is None else float(segment.newest)


class _Later:
    """Whether a segment after a given one holds a run in a build (so the copy in the given
    one is stale): the Bloom filters first, then the segment itself, each answer kept."""

    def __init__(self, root: Path, listed: list[Segment], build: Any) -> None:
        self.root, self.listed, self.build = root, listed, build
        self._read: dict[int, set[str]] = {}

    def holds(self, n: int, run: str) -> bool:
        return any(
            run in self._runs(m)
            for m in range(n + 1, len(self.listed))
            if self.listed[m].may_hold(run)
        )

    def _runs(self, m: int) -> set[str]:
        if m not in self._read:
            import pyarrow.parquet as pq  # noqa: PLC0415 - pyarrow only where it is used

            path = self.root / self.listed[m].path
            found = pq.read_table(path, columns=["run"], filters=self.build).column("run")
            self._read[m] = set(found.unique().to_pylist())
        return self._read[m]


def _row(item: dict[str, Any]) -> Row:
    index = tuple((m["name"], m["score"]) for m in item["index"] or ())
    return Row(kind=item["kind"], id=item["id"], body=item["body"], index=index)
