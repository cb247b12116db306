"""The archive's index of retired histories: where each run whose stream went is in the
archive, so that the server keeps nothing per run once its history is archived.

Layout, in each partition's archive directory (``services.core.archive.partition_root``)::

    retired/manifest.json         the index's files, oldest first, each with a Bloom filter of
                                  its aggregates (rewritten atomically)
    retired/<n>-<hex>.parquet     aggregate (sorted) -> ``Retired``: the history's version and
                                  the archive's segments that hold its events

Invariants:
- The archiver writes a history's record here, durably, before its stream goes
  (``services.core.archiver.retire_runs``): a history with no stream is always found here (or,
  from a former version, in its field of ``events.keys.retired``).
- A history's newest record is the one that counts: a run restored, written to and retired
  again has a later record, listing every segment that holds its events. A record written for
  a run that moved before its stream went is never read (its stream is there).
- Files are merged as they come, the newest two while the older holds no more than the newer
  (``add``): a lookup reads at most a file per power of two of the histories, and a record is
  rewritten about that many times in all.
- A file the manifest does not list is a crashed pass's leftover: never read, and deleted by
  the next writer (``forget_unlisted``).

Only the archiver writes here, under the archive's lock; every reader of histories reads.
pyarrow is imported only where a file is written or read (``services.core.imports``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec

from events.bloom import bloom, may_hold
from services.core import durable
from services.core.durable import atomically, delete_unlisted

INDEX = "retired"
MANIFEST = "manifest.json"


class Retired(NamedTuple):
    """A history whose stream went to the archive: the aggregate's version then, and the
    segments holding its events, by their places (``services.core.archive``: the segments as
    first written, numbered for good, merged or not). Stored as ``"<version> <place> ..."``."""

    version: int
    segments: tuple[int, ...]

    def encode(self) -> str:
        return " ".join(str(n) for n in (self.version, *self.segments))

    @classmethod
    def decode(cls, value: bytes | str) -> Retired:
        version, *segments = (value.decode() if isinstance(value, bytes) else value).split()
        return cls(int(version), tuple(int(n) for n in segments))


class IndexFile(msgspec.Struct, frozen=True):
    path: str  # relative to the partition's archive
    histories: int
    bloom: bytes  # of its aggregates (``events.bloom``)


class IndexManifest(msgspec.Struct):
    files: list[IndexFile] = msgspec.field(default_factory=list)
    made: int = 0  # files ever written: the next one's number


class RetiredIndex:
    """One partition's index (``root``: its archive directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._manifest = durable.Manifest(root / INDEX / MANIFEST, IndexManifest)

    def manifest(self) -> IndexManifest:
        """The listed files; decoded again only once the manifest changed."""
        return self._manifest.read() or IndexManifest()

    def find(self, aggregate: str) -> Retired | None:
        """``aggregate``'s newest record, or None where it has none."""
        for listed in reversed(self.manifest().files):
            if may_hold(listed.bloom, aggregate):
                # pyarrow only once a file may hold it (a Bloom filter says no to most others)
                from services.core import segments  # noqa: PLC0415

                found = segments.find_in_index(self.root / listed.path, aggregate)
                if found is not None:
                    return Retired.decode(found)
        return None

    def add(self, records: Mapping[str, Retired]) -> None:
        """List ``records`` (aggregate to record), durably, as the newest; then merge the
        newest files while the older of the two holds no more than the newer."""
        if not records:
            return
        from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

        manifest = self.manifest()
        rows = {aggregate: kept.encode() for aggregate, kept in records.items()}
        path, made = self._new(manifest.made), manifest.made + 1
        atomically(self.root / path, lambda tmp: segments.write_index(rows, tmp))
        files = [*manifest.files, IndexFile(path, len(rows), bloom(rows))]
        while len(files) >= 2 and files[-2].histories <= files[-1].histories:
            files[-2:] = [self._merged(files[-2:], made)]
            made += 1
        self._write(IndexManifest(files, made))
        self.forget_unlisted()

    def _merged(self, files: list[IndexFile], made: int) -> IndexFile:
        from services.core import segments  # noqa: PLC0415 - pyarrow only where it is used

        path, held = self._new(made), []

        def write(tmp: str) -> None:
            held.extend(segments.merge_index([self.root / f.path for f in files], tmp))

        atomically(self.root / path, write)
        return IndexFile(path, len(held), bloom(held))

    def forget_unlisted(self) -> list[Path]:
        """Delete index files the manifest does not list (merged away, or a crash's)."""
        directory = self.root / INDEX
        if not directory.is_dir():
            return []
        listed = {self.root / f.path for f in self.manifest().files}
        found = [*directory.glob("*.parquet"), *directory.glob(".*.parquet.tmp")]
        return delete_unlisted(found, listed)

    def _new(self, made: int) -> str:
        (self.root / INDEX).mkdir(parents=True, exist_ok=True)
        return f"{INDEX}/{made:08d}-{uuid.uuid4().hex[:8]}.parquet"

    def _write(self, manifest: IndexManifest) -> None:
        encoded = msgspec.json.encode(manifest)
        atomically(self._manifest.path, lambda tmp: Path(tmp).write_bytes(encoded))
