"""The Parquet side of the log's archive (``services.core.archive``): a segment's columns,
writing one, reading one back entry for entry, and the listed ones as a dataset.

Imported only where segments are written or read: pyarrow costs a process tens of MiB, and
most processes that read the log never open the archive (``services.core.imports``).

Invariant: reading a segment gives back each entry's fields byte for byte as the stream held
them: the ``k``, ``e``, ``n`` layout from its columns, any other layout from ``entry``.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from events import codec

#: A log position as numbers: (milliseconds, sequence).
Position = tuple[int, int]
Entry = tuple[str, list[bytes]]

SCHEMA = pa.schema(
    [
        ("position", pa.string()),
        ("ms", pa.int64()),
        ("seq", pa.uint64()),
        ("aggregate", pa.string()),  # "" for an entry that is no event
        ("kind", pa.binary()),
        ("body", pa.binary()),
        ("version", pa.int64()),
        # The whole entry (msgpack of [field, value, ...]) when it is not of the layout the
        # append function writes (k, e, n): kept as it was, whatever it is.
        ("entry", pa.binary()),
    ]
)
_LAYOUT = (codec.KIND, codec.BODY, codec.VERSION)
_READ = ["position", "ms", "seq", "kind", "body", "version", "entry"]


def table(entries: Sequence[Entry], aggregates: Sequence[str]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for (position, flat), aggregate in zip(entries, aggregates, strict=True):
        fields = codec.fields_of(flat)
        ms, _, seq = position.partition("-")
        columns["position"].append(position)
        columns["ms"].append(int(ms))
        columns["seq"].append(int(seq or 0))
        columns["aggregate"].append(aggregate)
        standard = tuple(flat[0::2]) == _LAYOUT
        columns["kind"].append(fields.get(codec.KIND))
        columns["body"].append(fields.get(codec.BODY))
        columns["version"].append(int(fields[codec.VERSION]) if standard else None)
        columns["entry"].append(None if standard else msgspec.msgpack.encode(flat))
    return pa.table(columns, schema=SCHEMA)


def write(data: pa.Table, path: str) -> None:
    pq.write_table(data, path, compression="zstd")


def release_memory() -> None:
    """Give what Arrow's allocator keeps for reuse back to the system: a long-lived process
    that writes a segment now and then (the projector) holds about what it uses."""
    pa.default_memory_pool().release_unused()


def read(path: Path) -> tuple[list[Position], list[Entry]]:
    """A segment's positions and its entries as the stream held them, in order."""
    return _entries(pq.read_table(path, columns=_READ))


def selection(
    kinds: Collection[bytes], since_ms: int | None = None, until_ms: int | None = None
) -> ds.Expression:
    """The rows of one of ``kinds`` (``codec.KIND``'s values) logged in [since, until) (None:
    no bound): a filter a scan pushes down, to the row groups and columns it reads."""
    where = pc.field("kind").isin(pa.array(sorted(kinds), pa.binary()))
    if since_ms is not None:
        where &= pc.field("ms") >= since_ms
    if until_ms is not None:
        where &= pc.field("ms") < until_ms
    return where


def scan(root: Path, paths: Sequence[str], where: ds.Expression) -> list[Entry]:
    """The entries of the segments ``paths`` (relative to ``root``, in log order) that
    ``where`` selects (``selection``), in log order, as the stream held them."""
    if not paths:
        return []
    found = dataset(root, paths).to_table(columns=_READ, filter=where)
    # A threaded scan need not hand the files' batches back in order: the log's is by position.
    # Its order is mostly kept, and taking every row again costs more than checking.
    order = pc.sort_indices(found, sort_keys=[("ms", "ascending"), ("seq", "ascending")])
    if not order.equals(pa.array(range(len(order)), order.type)):
        found = found.take(order)
    return _entries(found)[1]


def _entries(data: pa.Table) -> tuple[list[Position], list[Entry]]:
    rows = data.to_pydict()
    positions = list(zip(rows["ms"], rows["seq"], strict=True))
    entries = [
        (
            position,
            [codec.KIND, kind, codec.BODY, body, codec.VERSION, str(version).encode()]
            if entry is None
            else msgspec.msgpack.decode(entry, type=list[bytes]),
        )
        for position, kind, body, version, entry in zip(
            rows["position"],
            rows["kind"],
            rows["body"],
            rows["version"],
            rows["entry"],
            strict=True,
        )
    ]
    return positions, entries


def read_aggregate(
    path: Path, aggregate: str, rows: Sequence[tuple[int, int]] | None = None
) -> list[Entry]:
    """The entries of one aggregate in a segment (in its rows ``[start, end)`` of ``rows``;
    None: all of them), in order, as the stream held them."""
    if rows is None:
        data = pq.read_table(path, columns=_READ, filters=[("aggregate", "=", aggregate)])
        return _entries(data)[1]
    source = pq.ParquetFile(path)
    meta = source.metadata
    sizes = [meta.row_group(n).num_rows for n in range(meta.num_row_groups)]
    starts = list(itertools.accumulate(sizes, initial=0))  # each group's first row
    groups = sorted(
        {
            group
            for start, end in rows
            for group in range(
                bisect.bisect_right(starts, start) - 1, bisect.bisect_left(starts, end)
            )
        }
    )
    read = source.read_row_groups(groups, columns=[*_READ, "aggregate"])
    # Where each group read begins in ``read``: the groups read, one after another.
    offsets = itertools.accumulate((sizes[g] for g in groups), initial=0)
    at = dict(zip(groups, offsets, strict=False))
    parts = []
    for start, end in sorted(rows):
        group = bisect.bisect_right(starts, start) - 1
        parts.append(read.slice(at[group] + start - starts[group], end - start))
    data = pa.concat_tables(parts) if parts else read.slice(0, 0)
    return _entries(data.filter(pc.equal(data["aggregate"], aggregate)))[1]


# --- merged segments (``services.core.archive``: a day's segments merged as they come) ----------

#: The footer's record, in a merged segment, of the segments it was merged from as first
#: written (the archive's *places*), in order: each one's last position and its rows.
PLACES = b"runplane.places"
Place = tuple[str, int]
#: Rows of a merged segment a row group: a read of the log holds one at once, and a history's
#: lookup reads the groups its places' rows are in (``bench.soak``, a million events: 30 ms a
#: lookup with 16,384, 52 ms with 65,536, 34 ms before segments merged).
GROUP_ROWS = 16_384


class Layout(NamedTuple):
    """A segment's row groups, each as the least and greatest ``ms`` it holds, and its places
    (None: a segment as first written, one place)."""

    groups: list[tuple[int, int]]
    places: list[Place] | None


def layout(path: Path) -> Layout:
    """``path``'s layout, from its footer alone."""
    meta = pq.read_metadata(path)
    ms = meta.schema.names.index("ms")
    groups: list[tuple[int, int]] = []
    for n in range(meta.num_row_groups):
        stats = meta.row_group(n).column(ms).statistics
        known = stats is not None and stats.has_min_max
        groups.append((stats.min, stats.max) if known else (0, 2**63 - 1))
    recorded = (meta.metadata or {}).get(PLACES)
    places = None if recorded is None else msgspec.json.decode(recorded, type=list[Place])
    return Layout(groups, places)


def read_groups(path: Path, groups: Sequence[int]) -> tuple[list[Position], list[Entry]]:
    """The positions and entries of ``path``'s row groups ``groups``, in order."""
    return _entries(pq.ParquetFile(path).read_row_groups(groups, columns=_READ))


def merge(parts: Sequence[tuple[Path, list[Place]]], out: str) -> None:
    """The segments ``parts`` (in log order, each with its places) as one at ``out``, in row
    groups of ``GROUP_ROWS`` (one input row group and one output group in memory at a time),
    its places recorded in its footer (``PLACES``): a place is a range of its rows."""
    places = [place for _, held in parts for place in held]
    schema = SCHEMA.with_metadata({PLACES: msgspec.json.encode(places)})
    held: list[pa.Table] = []
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for path, _ in parts:
            source = pq.ParquetFile(path)
            for n in range(source.num_row_groups):
                held.append(source.read_row_group(n).replace_schema_metadata(schema.metadata))
                if sum(t.num_rows for t in held) >= GROUP_ROWS:
                    rows = pa.concat_tables(held)
                    whole = rows.num_rows - rows.num_rows % GROUP_ROWS
                    writer.write_table(rows.slice(0, whole), row_group_size=GROUP_ROWS)
                    held = [rows.slice(whole)]
        if rows := sum(t.num_rows for t in held):
            writer.write_table(pa.concat_tables(held), row_group_size=rows)
    written = pq.read_metadata(out).num_rows
    if written != sum(rows for _, rows in places):  # never listed: the merge fails
        raise AssertionError(f"{out}: {written} rows written for places {places}")


def dataset(root: Path, paths: Sequence[str]) -> ds.Dataset:
    """The segments ``paths`` (relative to ``root``) as one dataset, ``day`` from their folder."""
    return ds.dataset(
        [str(root / path) for path in paths],
        schema=SCHEMA.append(pa.field("day", pa.string())),
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("day", pa.string())]), flavor="hive"),
        partition_base_dir=str(root),
    )


def union(datasets: Sequence[ds.Dataset]) -> ds.Dataset:
    """``datasets`` (of one schema) read as one."""
    return ds.dataset(list(datasets))


# --- the archive's index of retired histories (``services.core.retired``) ---------------------

INDEX_SCHEMA = pa.schema([("aggregate", pa.string()), ("retired", pa.string())])
#: Rows of an index file a row group: its rows are sorted by aggregate, so a lookup of one reads
#: the footer and one group.
_INDEX_GROUP = 4096


def write_index(rows: dict[str, str], path: str) -> None:
    """An index file of ``rows`` (aggregate to its ``Retired``, encoded), sorted by aggregate."""
    names = sorted(rows)
    data = pa.table({"aggregate": names, "retired": [rows[n] for n in names]}, schema=INDEX_SCHEMA)
    pq.write_table(data, path, compression="zstd", row_group_size=_INDEX_GROUP)


def find_in_index(path: Path, aggregate: str) -> str | None:
    """``aggregate``'s record in the index file ``path``, or None."""
    found = pq.read_table(path, columns=["retired"], filters=[("aggregate", "=", aggregate)])
    return cast(str, found.column(0)[0].as_py()) if len(found) else None


def merge_index(paths: Sequence[Path], path: str) -> list[str]:
    """The index files ``paths`` (oldest first) as one at ``path``: each aggregate's newest
    record; the aggregates it holds."""
    newest_first = pa.concat_tables([pq.read_table(p) for p in reversed(paths)])
    numbered = newest_first.append_column("at", pa.array(range(len(newest_first)), pa.int64()))
    first = numbered.group_by("aggregate", use_threads=False).aggregate([("at", "min")])
    kept = newest_first.take(first["at_min"]).sort_by("aggregate")
    pq.write_table(kept, path, compression="zstd", row_group_size=_INDEX_GROUP)
    return cast(list[str], kept["aggregate"].to_pylist())
