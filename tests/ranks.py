"""Paths a rank's command may use in tests.

Run as root (CI), the node-agents run each run's ranks as a uid of its own
(``services.node_agent.isolation``), which cannot enter pytest's 0700 temporary directories. A
test that hands a rank a file to read, or a directory to write (a marker it leaves, a beat it
writes), opens just that path to ranks; as any other user this changes nothing a rank needs.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.core.procstat import ENDED, stat

__all__ = ["open_to_ranks", "running", "trusting_git"]


def open_to_ranks(path: Path, *, writable: bool = False) -> Path:
    """``path`` (a directory, created if missing) reachable by any uid: its ancestors get
    o+x (they stay unlistable), what is in it o+rX; ``writable``: mode 1777, as /tmp. Returns
    ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001 and parent.stat().st_uid == os.geteuid():
            parent.chmod((mode & 0o7777) | 0o001)
    for top, dirs, files in os.walk(path):
        for name in dirs:
            _add(Path(top, name), 0o005)
        for name in files:
            file = Path(top, name)
            _add(file, 0o005 if not file.is_symlink() and file.stat().st_mode & 0o100 else 0o004)
    path.chmod(0o1777 if writable else (path.stat().st_mode & 0o7777) | 0o005)
    return path


def _add(path: Path, bits: int) -> None:
    if not path.is_symlink():
        path.chmod((path.stat().st_mode & 0o7777) | bits)


def trusting_git(directory: Path) -> dict[str, str]:
    """The variables that make a rank's git trust the test's repositories (root's, in CI),
    which git refuses to read as another user ("dubious ownership") unless told: a git config
    in ``directory`` (opened to ranks) named by ``GIT_CONFIG_GLOBAL``."""
    config = open_to_ranks(directory) / "gitconfig"
    config.write_text("[safe]\n\tdirectory = *\n")
    config.chmod(0o644)
    return {"GIT_CONFIG_GLOBAL": str(config)}


def running(*argv: str) -> list[int]:
    """The pids of the live processes whose command line starts with ``argv`` (a rank's
    daemon, found by the marker in its arguments)."""
    wanted = [arg.encode() for arg in argv]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat(proc.name)
        if args[: len(wanted)] == wanted and fields is not None and fields[0] not in ENDED:
            found.append(int(proc.name))
    return found
