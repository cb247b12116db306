"""describe run's event lines for a rank's end: the signal, the exit code, and why."""

from __future__ import annotations

import pytest

from events.model import ImagePullFinished, RankExited, Reason
from projections.narrative import describe

STOPPED = Reason(category="stopped", code="Stopped", message="stopped by root")
ERROR = Reason(category="user", code="Error", exit_code=3, message="exit 3")
LOST = Reason(category="system", code="RankLost", message="the shim died")


def exited(exit_code: int | None, signal: int | None, reason: Reason | None) -> RankExited:
    return RankExited(
        id="e", actor="agent@node-0", run_id="r", attempt=0, rank=0, node="node-0",
        exit_code=exit_code, signal=signal, reason=reason,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("exit_code", "signal", "reason", "line"),
    [
        (None, 15, STOPPED, "Rank 0 on node-0 ended by signal 15 (stopped by root)"),
        (143, 15, STOPPED, "Rank 0 on node-0 ended by signal 15 (stopped by root)"),
        (None, 9, STOPPED, "Rank 0 on node-0 ended by signal 9 (stopped by root)"),
        (3, None, ERROR, "Rank 0 on node-0 exited with exit code 3: Error (exit code 3) (exit 3)"),
        (None, None, LOST, "Rank 0 on node-0 ended without an exit code: RankLost (the shim died)"),
        (None, 11, None, "Rank 0 on node-0 ended by signal 11"),
        (0, None, None, None),
        (None, None, None, None),
    ],
)
def test_a_rank_end_says_how_and_why(
    exit_code: int | None, signal: int | None, reason: Reason | None, line: str | None
) -> None:
    assert describe(exited(exit_code, signal, reason)) == line


def pulled(size: int | None, duration_ms: int | None) -> ImagePullFinished:
    return ImagePullFinished(
        id="e", actor="agent@node-0", run_id="r", attempt=0, rank=1, node="node-0",
        image="reg:5000/img:1", size_bytes=size, duration_ms=duration_ms,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("size", "duration_ms", "line"),
    [
        (2_048_000, 1234, "Image reg:5000/img:1 pulled on rank 1 (node-0): 2.0 MB in 1.23s"),
        (512, 5, "Image reg:5000/img:1 pulled on rank 1 (node-0): 512 B in 0.01s"),
        (None, 40, "Image reg:5000/img:1 pulled on rank 1 (node-0): in 0.04s"),
        (None, None, None),  # an executor that does not pull itself measures nothing
    ],
)
def test_a_measured_pull_is_a_line(size: int | None, duration_ms: int | None, line: str) -> None:
    assert describe(pulled(size, duration_ms)) == line
