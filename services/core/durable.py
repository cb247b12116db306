"""Making a file's or a directory's contents durable: what an atomic replace needs around it
(the new file synced before the rename, its directory after), and reading what was written
so: a manifest decoded once per replacement, files it does not list deleted."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Generic, TypeVar

import msgspec


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by its path (a directory: so a rename in it survives a
    crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomically(path: Path, write: Callable[[str], object]) -> None:
    """Write ``path`` through a temporary file beside it (``write`` is given its name): fsynced,
    renamed, directory fsynced."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def delete_unlisted(found: Iterable[Path], listed: Collection[Path]) -> list[Path]:
    """Delete each file of ``found`` that a manifest does not list (``listed``): a crash's
    leftover, or a file merged away. Those deleted."""
    gone = [path for path in found if path not in listed]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


_M = TypeVar("_M")


class Manifest(Generic[_M]):
    """A manifest file (msgspec JSON of ``kind``), decoded again only once it was replaced:
    it is only ever renamed over (``atomically``), so an unchanged file keeps its identity."""

    def __init__(self, path: Path, kind: type[_M]) -> None:
        self.path, self.kind = path, kind
        self._kept: tuple[tuple[int, int, int], _M] | None = None

    def read(self) -> _M | None:
        """The manifest, or None where there is none yet."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._kept is None or self._kept[0] != seen:
            self._kept = (seen, msgspec.json.decode(self.path.read_bytes(), type=self.kind))
        return self._kept[1]
