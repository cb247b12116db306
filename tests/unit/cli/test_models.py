"""A Run built from the read models: what a waiting resumption shows before it is placed."""

from __future__ import annotations

import msgspec

from cli.models import Run, build_run
from cli.render import instance
from events.codec import Recorded
from events.model import AttemptQueued
from projections.attempts import AttemptsProjection
from projections.run_status import KIND, RunRow, RunStatusProjection
from tests.unit.projections.history import SCHEDULER, History


def _run(records: list[Recorded], run_id: str) -> Run:
    """As ``get_run`` builds it: the run's history folded by the projector's folds."""
    status, attempts = RunStatusProjection(), AttemptsProjection()
    for record in records:
        status.apply(record)
        attempts.apply(record)
    [row] = status.rows([(KIND, run_id)])
    return build_run(msgspec.json.decode(row.body or b"", type=RunRow), attempts.runs[run_id])


def test_a_queued_resumption_shows_the_nodes_and_instance_its_request_means() -> None:
    h = History()
    h.submit("2026-11-24 10:00:00", "r1", gpus=1000, nodes=None)
    waiting = _run(h.records, "r1").latest_resumption
    assert (waiting.node_count, instance(waiting)) == (1, "1000x a100")  # as asked, for now
    h.add(
        "2026-11-24 10:00:01",
        AttemptQueued(
            id=h.new_id(), actor=SCHEDULER, run_id="r1", nodes=125, gpus=1000, gpu_type="a100"
        ),
    )
    queued = _run(h.records, "r1").latest_resumption
    assert (queued.node_count, queued.gpus, instance(queued)) == (125, 1000, "8x a100")
