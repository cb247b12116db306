"""Files only their owner reads (passwords, keys, tokens), written so that no other user can
read them, not even for an instant. Standard library only: the local stack's supervisor and the
Valkey launcher use it and stay small."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_private", "write_private_bytes"]


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """``text`` and a line end in ``path``, with ``mode`` from the first byte on, replacing it
    whole."""
    write_private_bytes(path, (text + "\n").encode(), mode)


def write_private_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """``data`` in ``path``, with ``mode`` from the first byte on, replacing it whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)  # the umask may have narrowed it
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)
