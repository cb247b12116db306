"""The node's fence lease: a file the agent renews each heartbeat and every shim watches.

``<data_dir>/lease`` holds the time (``CLOCK_BOOTTIME``, seconds, shared by every process of
the machine and advancing through a suspend) at which the agent last renewed its heartbeat key,
read *before* the key was sent: the lease is never younger than the key it stands for. A shim
whose lease is older than its ``fence_timeout_s`` stops its command (docs/fencing.md). No
Valkey credentials are needed to read it: the shims and the agent share the node's disk.

Standard library only: the shim imports it.
"""

from __future__ import annotations

import time
from pathlib import Path

from services.node_agent.shim.ondisk import atomic_write

LEASE = "lease"


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def renew(path: Path, at: float) -> None:
    """The agent's beat at ``at`` (``now()`` taken before the heartbeat was sent) succeeded."""
    atomic_write(path, repr(at).encode())


def renewed_at(path: Path) -> float | None:
    """When the lease was last renewed; None if it cannot be read (no fencing without one)."""
    try:
        return float(path.read_bytes())
    except (OSError, ValueError):
        return None


def expired(path: Path, fence_timeout_s: float, at: float) -> bool:
    renewed = renewed_at(path)
    return renewed is not None and at - renewed > fence_timeout_s
