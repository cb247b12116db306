"""Making a file's or a directory's contents durable: what an atomic replace needs around it
(the new file synced before the rename, its directory after). Standard library only."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
from pathlib import Path


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
