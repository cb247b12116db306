"""The GPU usage rule: what an attempt holds, and for how long, on the log's own clock.

An attempt uses ``gpus x (time it left TERMINATING - time it entered STARTING)``, the two
times being those of its ``attempt.scheduled`` and of its ending event, both stamped by the
log (one clock for every writer, not each host's). Integer milliseconds, never floats: billing
sums them exactly. Pure.
"""

from __future__ import annotations

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def gpu_ms(gpus: int, started_at: int, ended_at: int) -> int:
    """GPU-milliseconds of ``gpus`` held from ``started_at`` to ``ended_at`` (ms); never
    negative (a reader's ``now`` may lag the log's)."""
    return gpus * max(0, ended_at - started_at)
