"""``bench.scale`` at a tiny size against a real server of its own: the real scheduler process
and the simulated fleet carry every run to COMPLETED, and the log they leave never gave one GPU
to two attempts at once.

The bench waits for its runs itself (its own deadline); the checks below read the finished log
again, apart from the bench's own reading of it, so a bug there cannot hide one here."""

from __future__ import annotations

from bench import scale
from events.model import (
    AttemptCompleted,
    AttemptFailed,
    AttemptScheduled,
    AttemptStopped,
    RetryScheduled,
    RunEvent,
    RunSubmitted,
)
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.core.valkey import ValkeyProcess

RUNS = 200


async def test_every_run_completes_and_no_gpu_is_double_booked(
    valkey_server: ValkeyProcess,
) -> None:
    config = scale.Config(
        nodes=20,
        runs=RUNS,
        runtime_s=0.1,
        baseline_entries=1_000,
        pure_rounds=3,
        fanout_sample=1_000,
        copy_sample=400,
        timeout_s=200,
    )
    report = await scale.run(config, valkey_server.url)

    assert report.statuses == {"COMPLETED": RUNS}
    assert report.refused == []
    assert report.double_booked == []
    assert report.nodes_lost == 0
    assert report.placements >= RUNS
    assert report.run_events > 0
    assert report.events_per_s > 0
    assert report.placements_per_s > 0
    # The appends copied the runs' events into their nodes' inboxes (counted, not timed).
    assert 0 < report.inboxes <= config.nodes
    assert report.inbox_copies > 0
    assert report.inbox_us_per_delivery is not None

    store = EventStore(connect(valkey_server.url), Settings(redis_url=valkey_server.url))
    try:
        records = [record async for record in store.replay()]
    finally:
        await store.close()

    submitted: set[str] = set()
    ended: dict[str, type] = {}  # run -> how its latest attempt ended (until a retry opens)
    held: dict[tuple[str, int], tuple[str, int]] = {}  # (node, GPU) -> (run, attempt)
    placed: dict[tuple[str, int], list[tuple[str, int]]] = {}
    overlaps: list[tuple[tuple[str, int], tuple[str, int], tuple[str, int]]] = []
    for record in records:
        event = record.event
        if not isinstance(event, RunEvent):
            continue
        attempt = (event.run_id, event.attempt)
        if isinstance(event, RunSubmitted):
            submitted.add(event.run_id)
        elif isinstance(event, AttemptScheduled):
            gpus = [(rank.node, gpu) for rank in event.ranks for gpu in rank.gpus]
            overlaps += [(gpu, held[gpu], attempt) for gpu in gpus if gpu in held]
            held.update(dict.fromkeys(gpus, attempt))
            placed[attempt] = gpus
        elif isinstance(event, AttemptCompleted | AttemptStopped | AttemptFailed):
            ended[event.run_id] = type(event)
            for gpu in placed.pop(attempt, []):
                if held.get(gpu) == attempt:
                    del held[gpu]
        elif isinstance(event, RetryScheduled):
            del ended[event.run_id]

    assert len(submitted) == RUNS
    assert ended == dict.fromkeys(submitted, AttemptCompleted)
    assert overlaps == []
    assert held == {}  # every GPU given back
