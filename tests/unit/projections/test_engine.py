"""The engine's routing: a fold gets only the event types it takes, entries no fold takes are
not decoded, and either way every build's position moves on."""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Sequence

import pytest

from events import codec
from projections.audit import AuditProjection
from projections.billing import BillingProjection
from projections.catalog import make_all
from projections.engine import Build, Engine
from projections.reader import Entry
from projections.runner import Runner
from tests.unit.projections.fakes import FakeLog, FakeStore
from tests.unit.projections.history import History
from tests.unit.projections.simulator import history


def flat(fields: dict[bytes, bytes]) -> list[bytes]:
    """An entry's fields as the server sends them."""
    return [item for pair in fields.items() for item in pair]


def a_run_through_setup() -> list[tuple[str, dict[bytes, bytes]]]:
    h = History()
    h.node("2026-11-24 09:00:00", "n1")
    h.submit("2026-11-24 10:00:00", "r1")
    h.queue("2026-11-24 10:00:01", "r1")
    h.schedule("2026-11-24 10:01:00", "r1", nodes=("n1",), gpus=8)
    h.start("2026-11-24 10:01:05", "r1")  # ranks running, attempt running: billing takes neither
    return [(r.position, codec.encode(r.event) | {codec.VERSION: b"1"}) for r in h.records]


@pytest.mark.parametrize("shape", ["mapping", "flat"])
def test_a_build_moves_past_what_its_fold_does_not_take(shape: str) -> None:
    entries = a_run_through_setup()
    engine = Engine([Build(BillingProjection(), "v1")])
    for position, fields in entries:
        engine.feed_entry(position, fields if shape == "mapping" else flat(fields))
    assert engine.applied == (tuple(int(p) for p in entries[-1][0].split("-")),)
    batch = engine.batch()
    assert batch is not None
    assert batch.parts[0].checkpoint == entries[-1][0]


def test_an_entry_no_fold_takes_is_not_decoded_one_some_fold_takes_is() -> None:
    broken = [codec.KIND, b"image.pull_started@1", codec.BODY, b"{not json", codec.VERSION, b"1"]
    billing = Engine([Build(BillingProjection(), "v1")])
    billing.feed_entry("5-0", broken)
    assert billing.undecodable == []  # billing takes no image pulls: never decoded
    assert billing.applied == ((5, 0),)
    audit = Engine([Build(AuditProjection(), "v1")])
    audit.feed_entry("5-0", [*broken[:1], b"run.stop_requested@1", *broken[2:]])
    assert [(position, why[:11]) for _, position, _, why in audit.undecodable] == [
        ("5-0", "broken JSON")
    ]
    assert audit.applied == ((5, 0),)


def test_folds_sharing_an_engine_store_what_each_stores_alone() -> None:
    """Alone, most of a fold's entries are not even decoded (nothing it takes); beside the
    other folds all are: the rows and checkpoints are the same either way."""
    entries = history(random.Random(12), 500, runs=8)
    together = Engine([Build(p, "v1") for p in make_all()])
    for position, fields in entries:
        together.feed_entry(position, flat(fields))
    batch = together.batch()
    assert batch is not None
    for part, projection in zip(batch.parts, make_all(), strict=True):
        alone = Engine([Build(projection, "v1")])
        for position, fields in entries:
            alone.feed_entry(position, fields)
        single = alone.batch()
        assert single is not None
        assert sorted(part.rows, key=repr) == sorted(single.parts[0].rows, key=repr)
        assert part.checkpoint == single.parts[0].checkpoint


class Failing:
    async def read(self, after: str, count: int) -> Sequence[Entry]:
        raise ConnectionError("the server went away")


def test_the_cyclic_collector_runs_again_after_a_catch_up_even_one_that_failed() -> None:
    assert gc.isenabled()
    runner = Runner(FakeStore(), FakeLog(history(random.Random(1), 50)), make_all())
    runner.engine = Engine([Build(p, "v1") for p in make_all()])
    asyncio.run(runner.catch_up())
    assert gc.isenabled()
    failing = Runner(FakeStore(), Failing(), make_all())
    with pytest.raises(ConnectionError):
        asyncio.run(failing.catch_up())
    assert gc.isenabled()
