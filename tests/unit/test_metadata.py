"""A metadata update is decided on the run's metadata: only the keys whose JSON value changes
are carried, nothing is appended when none does, and the merged metadata is held to the limit."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import commands
from events import metadata as md
from events.lifecycle import RunState, fold
from events.model import MetadataUpdated, RunSubmitted
from tests.factories import new_id, spec

ALICE = "alice@example.com"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def submitted(metadata: dict[str, Any]) -> RunSubmitted:
    return RunSubmitted(
        id=new_id(),
        actor=ALICE,
        run_id="r1",
        name="hello-abcdef",
        spec=msgspec.structs.replace(spec(), metadata=metadata),
    )


def run_with(metadata: dict[str, Any], *events: MetadataUpdated) -> RunState:
    state = fold([submitted(metadata), *events])
    assert state is not None
    return state


def decide(state: RunState, metadata: dict[str, Any], limit: int | None = None) -> list[Any]:
    command = commands.UpdateMetadata(actor=ALICE, metadata=metadata, max_bytes=limit)
    return commands.decide(state, command, new_id)


def test_an_update_carries_only_the_keys_whose_value_changes() -> None:
    state = run_with({"team": "nlp", "step": 1, "loss": 0.5})
    [event] = decide(state, {"team": "nlp", "step": 2, "loss": 0.5, "epoch": 3})
    assert isinstance(event, MetadataUpdated)
    assert event.metadata == {"step": 2, "epoch": 3}
    assert (event.actor, event.run_id, event.attempt) == (ALICE, "r1", 0)


def test_an_update_that_changes_nothing_appends_nothing() -> None:
    state = run_with({"team": "nlp", "progress": "[epoch=3/10]", "nested": {"a": [1, 2.0]}})
    assert decide(state, {"team": "nlp", "nested": {"a": [1.0, 2]}}) == []
    assert decide(state, {}) == []


def test_a_resent_flush_after_an_update_appends_nothing() -> None:
    flush = {"mosaicml/training_progress": "[epoch=1/10]", "mosaicml/num_nodes": 1}
    events = decide(run_with({}), flush)
    assert [e.metadata for e in events] == [flush]
    assert decide(run_with({}, *events), flush) == []
    [later] = decide(run_with({}, *events), flush | {"mosaicml/training_progress": "[epoch=2/10]"})
    assert later.metadata == {"mosaicml/training_progress": "[epoch=2/10]"}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (1, True),
        (0, False),
        (None, 0),
        (None, ""),
        ("1", 1),
        ([1], (1, 2)),
        ({"a": 1}, {"a": 1, "b": 2}),
        ({"a": 1}, [["a", 1]]),
        (1, 1.5),
    ],
)
def test_json_values_of_other_kinds_or_values_are_changes(old: Any, new: Any) -> None:
    state = run_with({"k": old})
    [event] = decide(state, {"k": new})
    assert md.same(event.metadata, {"k": new})
    assert not md.same(old, new)


@given(json_values)
def test_a_value_is_the_same_json_value_as_itself_read_back(value: Any) -> None:
    assert md.same(value, msgspec.json.decode(msgspec.json.encode(value)))
    assert md.changes({"k": value}, {"k": value}) == {}


def test_nan_and_infinities_are_carried_as_mclis_strings_at_any_depth() -> None:
    state = run_with({})
    given_ = {"loss": math.nan, "deep": {"xs": [math.inf, -math.inf, 1.0]}}
    [event] = decide(state, given_)
    assert event.metadata == {"loss": "NaN", "deep": {"xs": ["Infinity", "-Infinity", 1.0]}}
    assert decide(run_with({"loss": "NaN"}), {"loss": math.nan}) == []


def test_metadata_over_the_limit_is_refused_naming_the_run_the_size_and_the_limit() -> None:
    state = run_with({"team": "nlp"})
    big = {"blob": "x" * 2000}
    merged = md.size({"team": "nlp"} | big)
    with pytest.raises(commands.MetadataTooLarge) as refused:
        decide(state, big, limit=merged - 1)
    assert (refused.value.run, refused.value.size, refused.value.limit) == (
        "hello-abcdef",
        merged,
        merged - 1,
    )
    assert f"{merged} bytes" in str(refused.value)
    assert f"limit of {merged - 1} bytes" in str(refused.value)
    [event] = decide(state, big, limit=merged)
    assert event.metadata == big


def test_the_limit_is_on_the_merged_metadata_and_a_no_op_is_never_refused() -> None:
    state = run_with({"blob": "x" * 2000})
    with pytest.raises(commands.MetadataTooLarge):
        decide(state, {"step": 1}, limit=2000)
    assert decide(state, {"blob": "x" * 2000}, limit=100) == []
    assert decide(state, {"blob": "small"}, limit=100)  # shrinks it under the limit


def test_the_size_is_compact_utf8_json() -> None:
    assert md.size({}) == 2
    assert md.size({"a": "é"}) == len('{"a":"é"}'.encode())
