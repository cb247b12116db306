"""A run's view folded from its own history, with the projector's own folds: what a request
answers right after it appended (read-your-writes), exactly as the stored rows read. Pure."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from events.codec import Recorded
from projections.attempts import AttemptRow, AttemptsProjection
from projections.run_status import KIND, RunRow, RunStatusProjection


def fold_run(run_id: str, records: Iterable[Recorded]) -> tuple[RunRow, list[AttemptRow]] | None:
    """A run's row and attempts folded now from its own history, with the projector's own folds:
    never stale right after a request (read-your-writes), and exactly as the stored rows read.
    None if the history holds no run."""
    status, attempts = RunStatusProjection(), AttemptsProjection()
    for record in records:
        status.apply(record)
        attempts.apply(record)
    rows = [row for row in status.rows([(KIND, run_id)]) if row.body is not None]
    if not rows:
        return None
    return msgspec.json.decode(rows[0].body or b"", type=RunRow), attempts.runs.get(run_id, [])
