"""Cold rows: the projection rows of archived runs, out of Valkey, in Parquet segments.

Once the archiver retired a run's history (its stream went to the archive) and the projector
let the run go, the projector moves every row of the run, in every build readers read, to a
segment here and only then deletes them from Valkey (``services.projector.cooling``). Valkey
then holds the runs that may still move, not every run ever.

Layout of the directory (``<event archive>/rows``, named by ``events.keys.cold_rows``)::

    manifest.json                 the segments, oldest first (rewritten atomically)
    <n>.parquet                   one pass's rows: a row per stored row, with its memberships

Invariants:
- A run is cold exactly when its ``ANCHOR`` row is not in Valkey: the cooler deletes all of
  a run's rows in every build at once (``runplane_cool``), and a run that comes back has all
  of its rows written back with its next batch (``projections.runner``). A reader therefore
  reads Valkey first and takes a run from here only if Valkey lacks its anchor.
- A run cooled twice (it came back, then rested again) is in two segments: the later one is
  the run as it is, in every build: readers take a run's rows from the latest segment that
  holds the run at all, and a build it has no rows of there has none (a deleted run's
  ``done`` row of ``utilization`` is gone, not the one of an earlier segment).
- A segment the manifest does not list is a crashed pass's leftover: never read.

pyarrow is imported only where a segment is written or read (``services.core.imports``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from projections.base import Row

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST = "manifest.json"
#: The row whose absence from Valkey says a run is cold (``run_status``'s run row: a run
#: keeps it from its submission on, deleted or not): a run that came back and is warm again
#: may still have a stale copy in a segment.
ANCHOR = ("run_status", "run")
#: What the Parquet columns hold, in order.
COLUMNS = ("projection", "namespace", "run", "kind", "id", "body", "index", "created")
#: A stored row of a run, with where it is kept: (projection, namespace, run, row).
Placed = tuple[str, str, str, Row]


class Segment(msgspec.Struct, frozen=True):
    path: str  # relative to the directory
    runs: int
    rows: int


class Manifest(msgspec.Struct):
    segments: list[Segment] = msgspec.field(default_factory=list)


def manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not path.exists():
        return Manifest()
    return msgspec.json.decode(path.read_bytes(), type=Manifest)


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
    segment that holds it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def runs(self, projection: str, namespace: str, runs: Collection[str]) -> dict[str, list[Row]]:
        """The rows of each of ``runs`` that is here (the others are not in the result)."""
        if not runs:
            return {}
        wanted = set(runs)
        found: dict[str, list[Row]] = {}
        for run, row in self._rows(projection, namespace, lambda pc: pc.field("run").isin(wanted)):
            found.setdefault(run, []).append(row)
        return found

    def of_kind(self, projection: str, namespace: str, kind: str) -> dict[str, list[Row]]:
        """Every cold run's rows of ``kind``, by run."""
        found: dict[str, list[Row]] = {}
        for run, row in self._rows(projection, namespace, lambda pc: pc.field("kind") == kind):
            found.setdefault(run, []).append(row)
        return found

    def by_id(self, projection: str, namespace: str, kind: str, row_id: str) -> list[Row]:
        """The rows of ``kind`` with id ``row_id`` (of every run that has one; a run's name is
        one run's at a time)."""
        where = _kind_id(kind, row_id)
        return [row for _, row in self._rows(projection, namespace, where)]

    def created(self, namespace: str, low: float, high: float) -> list[tuple[int, str]]:
        """The cold ``run_status`` runs created in [low, high]: (created, run), newest first,
        ties by run descending (``query.list_runs``'s order). Their rows: ``runs``."""
        import pyarrow.compute as pc  # noqa: PLC0415 - pyarrow only where it is used
        import pyarrow.parquet as pq  # noqa: PLC0415

        where = (
            (pc.field("projection") == "run_status")
            & (pc.field("namespace") == namespace)
            & (pc.field("kind") == "run")
            & pc.field("created").is_valid()
        )
        if low != float("-inf"):
            where &= pc.field("created") >= int(low)
        if high != float("inf"):
            where &= pc.field("created") <= int(high)
        seen: set[str] = set()
        found: list[tuple[int, str]] = []
        for segment in reversed(manifest(self.root).segments):
            path = self.root / segment.path
            held = pq.read_table(path, columns=["run"]).column("run").unique().to_pylist()
            data = pq.read_table(path, columns=["run", "created"], filters=where).to_pydict()
            found += [
                (created, run)
                for run, created in zip(data["run"], data["created"], strict=True)
                if run not in seen
            ]
            seen.update(held)
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
            path = self.root / segment.path
            held = pq.read_table(path, columns=["run"]).column("run")
            selected = build if where is None else build & where(pc)
            data = pq.read_table(path, filters=selected).to_pylist()
            for item in data:
                if item["run"] in seen:
                    continue
                yield item["run"], _row(item)
            seen.update(held.unique().to_pylist())


def _kind_id(kind: str, row_id: str) -> Callable[[Any], Any]:
    return lambda pc: (pc.field("kind") == kind) & (pc.field("id") == row_id)


def _row(item: dict[str, Any]) -> Row:
    index = tuple((m["name"], m["score"]) for m in item["index"] or ())
    return Row(kind=item["kind"], id=item["id"], body=item["body"], index=index)
