"""Making a file's or a directory's contents durable: what an atomic replace needs around it
(the new file synced before the rename, its directory after). Standard library only."""

from __future__ import annotations

import os
from collections.abc import Callable
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
