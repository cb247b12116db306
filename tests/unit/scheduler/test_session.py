"""The scheduler's term reading the log: what it skips as its own appends, read back."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from events import codec, keys
from events.codec import VERSION
from services.core.store import Appended
from services.scheduler.app import Session
from services.scheduler.decision import decision
from tests import factories as f

P = 2
AT = "1700000000000-0"


async def test_a_position_it_appended_on_one_partition_skips_nothing_on_another() -> None:
    """Each partition's log numbers its entries itself: an entry of another partition at the
    position of one of the term's own appends is somebody else's event, and is folded."""
    settings = SimpleNamespace(partitions=P, scheduler_id="scheduler@test")
    scheduler: Any = SimpleNamespace(settings=settings, store=None, token="0" * 16)
    session = Session(scheduler)
    ours, theirs = f.submitted(), f.submitted()
    while keys.partition_of(ours.aggregate, P) == keys.partition_of(theirs.aggregate, P):
        theirs = f.submitted()
    await session.applied(decision([ours], 0), Appended([AT], 1, False))

    stream = keys.log_stream(keys.partition_of(theirs.aggregate, P))
    await session.fold(stream, [(AT.encode(), codec.encode(theirs) | {VERSION: b"1"})])

    assert theirs.run_id in session.state.runs  # folded, not taken for the term's own
    mine = keys.log_stream(keys.partition_of(ours.aggregate, P))
    await session.fold(mine, [(AT.encode(), codec.encode(ours) | {VERSION: b"1"})])
    assert not session.appended  # its own, read back: skipped, and forgotten
