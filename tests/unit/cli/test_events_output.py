"""``mcli events RUN -o json``: each event with where the log holds it, every field shown."""

from __future__ import annotations

import json
from typing import cast

import msgspec
from hypothesis import given

from cli.commands.admin import RECORD_KEYS, event_json
from events.codec import Recorded
from events.model import SECRET_FIELDS, AnyEvent, AttemptQueued, Event
from tests.unit.test_codec import ANY_EVENT


def test_the_log_position_stays_and_the_queue_position_has_its_own_key() -> None:
    queued = AttemptQueued(
        id="e7", actor="scheduler@h", time=1_700_000_000_000, run_id="r1", position=3
    )
    data = json.loads(json.dumps(event_json(Recorded("1700000000000-4", 2, queued))))
    assert (data["position"], data["version"], data["type"]) == (
        "1700000000000-4",
        2,
        "attempt.queued",
    )
    assert (data["queue_position"], data["attempt"], data["run_id"]) == (3, 0, "r1")
    assert data["time"] == 1_700_000_000_000


def test_every_field_is_there_defaults_too() -> None:
    queued = AttemptQueued(id="e7", actor="scheduler@h", run_id="r1")
    data = event_json(Recorded("1-0", 1, queued))
    for name in msgspec.structs.fields(AttemptQueued):
        shown = "queue_position" if name.name == "position" else name.name
        assert shown in data, name.name
    assert (data["attempt"], data["queue_position"], data["reason"]) == (0, 0, "")


@given(ANY_EVENT)
def test_no_event_field_takes_a_record_key(event: Event) -> None:
    data = event_json(Recorded("9-9", 42, cast(AnyEvent, event)))
    assert (data["position"], data["version"]) == ("9-9", 42)
    hidden = SECRET_FIELDS.get(type(event), frozenset())
    assert len(data) == len(RECORD_KEYS) + len(type(event).__struct_fields__) - len(hidden)
    assert not hidden & data.keys(), "a secret's hash is never shown"
