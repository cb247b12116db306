"""The codec: every event survives encode/decode, old shapes upcast, anything else is refused.

Strategies are derived from the schema (``msgspec.inspect``), so every field of every event,
nested structs included, is generated, and a field added tomorrow is covered without a change
here. Golden samples of old shapes live in ``tests/golden/<tag>@<version>.json``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.codec import (
    BODY,
    KIND,
    UPCASTERS,
    VERSION,
    decode,
    encode,
    kind_of,
    kinds_of,
    recorded,
    recorded_flat,
)
from events.errors import UndecodableEvent
from events.model import (
    ALL_EVENT_TYPES,
    AttemptScheduled,
    Event,
    RankPlacement,
    RunSubmitted,
    tag_of,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
POSITION = "1764000000000-0"
TAGS = [tag_of(cls) for cls in ALL_EVENT_TYPES]
CURRENT = {tag_of(cls): cls.VERSION for cls in ALL_EVENT_TYPES}
OLD_VERSIONS = [(tag, v) for tag, current in CURRENT.items() for v in range(1, current)]

# --- strategies ---------------------------------------------------------------------------

# NaN and the infinities have no JSON form (msgspec writes them as null), so no event may
# carry one; the lifecycle tests check that such values are refused where they can arrive.
FINITE_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | FINITE_FLOATS | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def strategy_for(info: mi.Type) -> st.SearchStrategy[Any]:  # noqa: PLR0911
    """Values of a schema type, every field of a struct always given (defaults included)."""
    match info:
        case mi.StrType():
            return st.text(max_size=12)
        case mi.IntType():
            return st.integers()
        case mi.FloatType():
            return FINITE_FLOATS
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
        case mi.AnyType():
            return JSON_VALUES
        case mi.LiteralType(values=values):
            return st.sampled_from(values)
        case mi.UnionType(types=types):
            return st.one_of(*(strategy_for(t) for t in types))
        case mi.ListType(item_type=item):
            return st.lists(strategy_for(item), max_size=3)
        case mi.DictType(key_type=key, value_type=value):
            return st.dictionaries(strategy_for(key), strategy_for(value), max_size=3)
        case mi.StructType(cls=cls, fields=fields):
            return st.builds(cls, **{field.name: strategy_for(field.type) for field in fields})
        case _:
            raise TypeError(f"no strategy for {info!r}: teach strategy_for this type")


@cache
def events_of(cls: type[Event]) -> st.SearchStrategy[Event]:
    return strategy_for(mi.type_info(cls))


ANY_EVENT: st.SearchStrategy[Event] = st.one_of(*(events_of(cls) for cls in ALL_EVENT_TYPES))
POSITIONS = st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**64 - 1))


def test_the_strategies_cover_every_field_of_every_event() -> None:
    def fields_of(info: mi.Type) -> set[str]:
        assert isinstance(info, mi.StructType)
        return {field.name for field in info.fields}

    for cls in ALL_EVENT_TYPES:
        info = mi.type_info(cls)
        assert fields_of(info) == set(cls.__struct_fields__)
        strategy_for(info)  # raises for a type the strategies do not know
    # The nested structs are generated field by field too.
    assert fields_of(mi.type_info(RankPlacement)) == {"rank", "node", "gpus", "gpu_uuids"}


# --- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_EVENT_TYPES, ids=TAGS)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), position=POSITIONS)
def test_decode_inverts_encode(cls: type[Event], data: st.DataObject, position: Any) -> None:
    event = data.draw(events_of(cls))
    ms, seq = position
    decoded = decode(f"{ms}-{seq}", encode(event))
    assert type(decoded) is cls
    assert decoded == msgspec.structs.replace(event, time=ms)


@settings(max_examples=200, deadline=None)
@given(event=ANY_EVENT)
def test_an_entry_is_its_kind_and_its_tagged_body(event: Event) -> None:
    fields = encode(event)
    tag = tag_of(type(event))
    assert set(fields) == {KIND, BODY}
    assert fields[KIND] == kind_of(event) == f"{tag}@{type(event).VERSION}".encode()
    body = json.loads(fields[BODY])
    assert body["type"] == tag


def test_a_writer_s_time_is_not_written_and_the_log_s_time_is_read() -> None:
    event = AttemptScheduled(
        id="e1",
        actor="scheduler@test",
        run_id="r1",
        cluster="local",
        ranks=[RankPlacement(rank=0, node="n", gpus=[0])],
    )
    fields = encode(event)
    assert "time" not in json.loads(fields[BODY])
    assert decode("1764000000123-7", fields).time == 1764000000123


# --- refusals -----------------------------------------------------------------------------


def entry(kind: str | None, body: Any) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes] = {}
    if kind is not None:
        fields[KIND] = kind.encode()
    if body is not None:
        fields[BODY] = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return fields


QUEUED = {"type": "attempt.queued", "id": "e1", "actor": "scheduler@test", "run_id": "r1"}
SCHEDULED_V1 = {
    "type": "attempt.scheduled",
    "id": "e2",
    "actor": "scheduler@test",
    "run_id": "r1",
    "cluster": "local",
    "placement": {"node-a": [0, 1]},
}


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        pytest.param(
            entry("run.exploded@1", {**QUEUED, "type": "run.exploded"}),
            "unknown event type 'run.exploded'",
            id="unknown-tag",
        ),
        pytest.param(
            entry("attempt.queued@1", {**QUEUED, "type": "run.exploded"}),
            "run.exploded",
            id="unknown-tag-in-body",
        ),
        pytest.param(
            entry("attempt.queued@2", QUEUED), "newer than this runplane knows", id="future-version"
        ),
        pytest.param(
            entry("attempt.scheduled@3", SCHEDULED_V1),
            "upgrade runplane",
            id="future-version-of-a-versioned-tag",
        ),
        pytest.param(entry("attempt.queued@one", QUEUED), "bad version 'one'", id="bad-version"),
        pytest.param(entry("attempt.queued", QUEUED), "bad version ''", id="no-version"),
        pytest.param(entry("attempt.queued@-1", QUEUED), "bad version '-1'", id="negative-version"),
        pytest.param(
            entry("attempt.queued@1", b'{"type": "attempt.queued", "id": '),
            "broken JSON",
            id="broken-json",
        ),
        pytest.param(entry("attempt.queued@1", b"\xff\xfe"), "broken JSON", id="not-utf8"),
        pytest.param(entry("attempt.scheduled@1", b"{"), "broken JSON", id="broken-json-old"),
        pytest.param(
            entry("attempt.scheduled@1", [1, 2]), "not a JSON object", id="old-body-not-an-object"
        ),
        pytest.param(
            entry("attempt.queued@1", [1, 2]), "attempt.queued@1", id="body-not-an-object"
        ),
        pytest.param(
            entry("attempt.queued@1", without(QUEUED, "run_id")), "run_id", id="missing-field"
        ),
        pytest.param(entry("attempt.queued@1", without(QUEUED, "type")), "type", id="missing-tag"),
        pytest.param(
            entry("attempt.scheduled@1", without(SCHEDULED_V1, "cluster")),
            "cluster",
            id="missing-field-old",
        ),
        pytest.param(
            entry("attempt.queued@1", {**QUEUED, "attempt": "zero"}), "attempt", id="wrong-type"
        ),
        pytest.param(entry(None, QUEUED), "not an event entry", id="no-kind"),
        pytest.param(entry("attempt.queued@1", None), "not an event entry", id="no-body"),
        pytest.param({b"x": b"y"}, "not an event entry", id="foreign-entry"),
        pytest.param({}, "not an event entry", id="empty-entry"),
    ],
)
def test_anything_but_a_known_event_is_undecodable(fields: dict[bytes, bytes], why: str) -> None:
    with pytest.raises(UndecodableEvent) as caught:
        decode(POSITION, fields)
    assert caught.value.position == POSITION
    assert POSITION in str(caught.value)
    assert why in caught.value.why


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(
            entry("attempt.scheduled@1", without(SCHEDULED_V1, "placement")),
            id="v1-without-placement",
        ),
        pytest.param(
            entry("attempt.scheduled@1", {**SCHEDULED_V1, "placement": [[0, 1]]}),
            id="v1-placement-not-an-object",
        ),
        pytest.param(entry("attempt.queued@0", QUEUED), id="version-0"),
        pytest.param(entry("attempt.scheduled@0", SCHEDULED_V1), id="version-0-versioned"),
        pytest.param(entry("attempt.queued@\u00b2", QUEUED), id="non-ascii-digit-version"),
    ],
)
def test_a_broken_old_entry_is_undecodable(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(UndecodableEvent, match=POSITION):
        decode(POSITION, fields)


def test_an_entry_whose_kind_and_body_disagree_is_undecodable() -> None:
    body = {"type": "run.deleted", "id": "e1", "actor": "alice", "run_id": "r1"}
    with pytest.raises(UndecodableEvent, match=POSITION):
        decode(POSITION, entry("attempt.queued@1", body))


# --- versions, upcasters and golden samples -------------------------------------------------


def load_golden(path: Path) -> tuple[str, dict[bytes, bytes]]:
    """A recorded log entry: its position and its fields (``e`` as a JSON object or text)."""
    recorded = json.loads(path.read_text())
    kind, body = recorded["fields"]["k"], recorded["fields"]["e"]
    raw = body.encode() if isinstance(body, str) else msgspec.json.encode(body)
    return recorded["position"], {KIND: kind.encode(), BODY: raw}


GOLDEN_FILES = sorted(GOLDEN.glob("*.json"))


def test_tags_are_unique() -> None:
    assert len(set(TAGS)) == len(TAGS) == len(ALL_EVENT_TYPES)


def test_versions_start_at_one() -> None:
    assert all(version >= 1 for version in CURRENT.values())


@pytest.mark.parametrize(("tag", "version"), OLD_VERSIONS)
def test_every_old_version_has_an_upcaster(tag: str, version: int) -> None:
    assert (tag, version) in UPCASTERS, f"{tag}@{version} has no upcaster in events.codec"


@pytest.mark.parametrize(("tag", "version"), sorted(UPCASTERS))
def test_every_upcaster_is_of_an_old_version_of_a_known_tag(tag: str, version: int) -> None:
    assert tag in CURRENT
    assert 1 <= version < CURRENT[tag]


@pytest.mark.parametrize(("tag", "version"), OLD_VERSIONS)
def test_every_old_version_has_a_golden_sample(tag: str, version: int) -> None:
    path = GOLDEN / f"{tag}@{version}.json"
    assert path.is_file(), f"record a sample of {tag}@{version} as {path}"


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[path.stem for path in GOLDEN_FILES])
def test_every_golden_sample_decodes_to_the_current_version(path: Path) -> None:
    position, fields = load_golden(path)
    assert fields[KIND].decode() == path.stem, "a golden file is named after its kind"
    tag = path.stem.partition("@")[0]
    event = decode(position, fields)
    assert tag_of(type(event)) == tag
    assert event.time == int(position.partition("-")[0])
    assert kind_of(event) == f"{tag}@{CURRENT[tag]}".encode()
    assert decode(position, encode(event)) == event


def test_a_v1_attempt_scheduled_decodes_with_its_ranks_in_placement_order() -> None:
    position, fields = load_golden(GOLDEN / "attempt.scheduled@1.json")
    assert decode(position, fields) == AttemptScheduled(
        id="0b4c2f7e9d1a4e6b8c3f5a7d9e1b3c5f",
        actor="scheduler@control-1",
        time=1764000000000,
        causation_id="5e2a9c1d7b3f4a6e8d0c2b4f6a8e0d2c",
        correlation_id="req-7f3a",
        run_id="run-hello-vc5nfs",
        attempt=1,
        cluster="local",
        gpu_type="a100_80gb",
        ranks=[
            RankPlacement(rank=0, node="node-a", gpus=[0, 1, 2, 3]),
            RankPlacement(rank=1, node="node-b", gpus=[0, 1, 2, 3]),
        ],
    )


# --- the replay fast path ---------------------------------------------------------------------


def flat(fields: dict[bytes, bytes], version: int = 7) -> list[bytes]:
    return [item for pair in {**fields, VERSION: b"%d" % version}.items() for item in pair]


@given(event=ANY_EVENT)
def test_the_fast_path_reads_what_the_general_path_reads(event: Event) -> None:
    fields = encode(event)
    fast = recorded_flat(POSITION.encode(), flat(fields))
    assert fast == recorded(POSITION, {**fields, VERSION: b"7"})
    assert fast.version == 7


def test_the_fast_path_falls_back_for_old_and_broken_entries() -> None:
    old = entry("attempt.scheduled@1", SCHEDULED_V1)
    assert recorded_flat(POSITION.encode(), flat(old)).event == decode(POSITION, old)
    for broken in (
        entry("attempt.queued@1", without(QUEUED, "run_id")),
        {KIND: b"attempt.queued@1", BODY: b"{not json"},
        entry("attempt.queued@1", {"type": "run.deleted", "id": "e", "actor": "a", "run_id": "r"}),
    ):
        with pytest.raises(UndecodableEvent, match=POSITION):
            recorded_flat(POSITION.encode(), flat(broken))


def test_a_reader_that_picks_entries_by_kind_takes_every_version_of_it() -> None:
    assert kinds_of({AttemptScheduled, RunSubmitted}) == {
        b"attempt.scheduled@1",  # upcast to 2 when decoded (UPCASTERS)
        b"attempt.scheduled@2",
        f"run.submitted@{RunSubmitted.VERSION}".encode(),
        *(f"run.submitted@{v}".encode() for v in range(1, RunSubmitted.VERSION)),
    }
    assert kinds_of(set()) == frozenset()
