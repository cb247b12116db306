"""The event contract as an AsyncAPI 3.0 document: the streams events live on, every event type
with its tag and version, and the JSON schema of each, generated from the msgspec Structs.

``document`` builds it (pure: no IO); ``python -m events.asyncapi`` prints it as YAML. The
copy in ``docs/asyncapi.yaml`` must equal ``render()``, which ``tests/unit/test_asyncapi.py``
checks (``python -m tests.asyncapi_doc --write`` rewrites it), so an event added, a field
renamed or a version bumped shows in the document or fails the tests.

Why not FastStream's generator: it describes a broker's subscribers and their handlers'
argument types, and runplane's handlers take the raw entry (``services.core.consumer``); the
contract is the entry's fields and the tagged union of ``events.model``, which msgspec renders.
Stream names are built by ``events.keys``; a stream's address holds the hash tag ``{p<n>}``,
which AsyncAPI would read as a parameter, so each channel's address is left empty and the key
is given as ``x-redis-key``.
"""

from __future__ import annotations

import inspect
import sys
from importlib import metadata
from typing import Any

import msgspec
import yaml

from events import codec, keys
from events.model import (
    ALL_EVENT_TYPES,
    NODE_EVENT_TYPES,
    RUN_EVENT_TYPES,
    USER_EVENT_TYPES,
    Event,
    tag_of,
)

SCHEMAS = "#/components/schemas/"
MESSAGES = "#/components/messages/"
PARTITION = "<partition>"
#: Which aggregate a family of events belongs to, its id's prefix, and its history channel.
AGGREGATES: tuple[tuple[str, str, tuple[type[Event], ...]], ...] = (
    ("run", "run:<run_id>", RUN_EVENT_TYPES),
    ("node", "node:<node>", NODE_EVENT_TYPES),
    ("user", "user:<name>", USER_EVENT_TYPES),
)
_ENTRY = (
    "A stream entry has three fields: `k`, the event's tag and schema version "
    "(`attempt.scheduled@2`); `e`, the event as JSON (the payload, its `type` the tag); `n`, "
    "the aggregate's version once the event is applied, written by the log. The entry's id "
    "(`<ms>-<seq>`) is the event's position, from the server's clock; `time` in the payload is "
    "left 0 by the writer and read as the id's milliseconds."
)


def _summary(cls: type) -> dict[str, str]:
    """The first paragraph of the class's own docstring (none inherited), as ``summary``."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    first = " ".join(doc.split("\n\n")[0].split())
    return {"summary": first} if first else {}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"{kind}{name}"}


def _headers(cls: type[Event]) -> dict[str, Any]:
    """The entry's fields beside the payload: its kind and the aggregate's version."""
    kind = f"{tag_of(cls)}@{cls.VERSION}"
    return {
        "type": "object",
        "properties": {
            codec.KIND.decode(): {"const": kind, "description": "The event's tag@version."},
            codec.VERSION.decode(): {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "The aggregate's version once this event is applied (the log's).",
            },
        },
        "required": [codec.KIND.decode(), codec.VERSION.decode()],
    }


def _message(cls: type[Event], aggregate: str) -> dict[str, Any]:
    return {
        "name": tag_of(cls),
        "title": cls.__name__,
        **_summary(cls),
        "contentType": "application/json",
        "headers": _headers(cls),
        "payload": _ref(SCHEMAS, cls.__name__),
        "x-tag": tag_of(cls),
        "x-version": cls.VERSION,
        "x-aggregate": aggregate,
    }


def _messages(types: tuple[type[Event], ...]) -> dict[str, Any]:
    return {cls.__name__: _ref(MESSAGES, cls.__name__) for cls in types}


def _dead_letter() -> dict[str, Any]:
    return {
        "name": "dead-letter",
        "title": "DeadLetter",
        "summary": "An entry a consumer group could not decode or handle, kept whole.",
        "contentType": "text/plain",
        "payload": {
            "type": "object",
            "properties": {
                "stream": {"type": "string", "description": "Where the entry was read."},
                "position": {"type": "string", "description": "Its id there."},
                "consumer": {"type": "string", "description": "The consumer that read it."},
                "error": {"type": "string", "description": "Why it was not handled."},
            },
            "patternProperties": {
                "^field:": {"type": "string", "description": "Each of the entry's own fields."}
            },
            "required": ["stream", "position", "consumer", "error"],
        },
    }


def document(version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the event contract; ``version``: runplane's."""
    _, schemas = msgspec.json.schema_components(ALL_EVENT_TYPES, ref_template=SCHEMAS + "{name}")
    messages: dict[str, Any] = {}
    for aggregate, _, types in AGGREGATES:
        messages.update({cls.__name__: _message(cls, aggregate) for cls in types})
    messages["DeadLetter"] = _dead_letter()
    channels: dict[str, Any] = {
        "log": {
            "address": None,
            "title": "The global log",
            "description": (
                "Every event of a partition's aggregates, in one total order (one partition by "
                "default: every event). Consumer groups read it from position 0. " + _ENTRY
            ),
            "messages": _messages(ALL_EVENT_TYPES),
            "x-redis-key": keys.log_stream(PARTITION),
        }
    }
    for aggregate, name, types in AGGREGATES:
        channels[f"{aggregate}History"] = {
            "address": None,
            "title": f"One {aggregate}'s history",
            "description": (
                f"The events of one {aggregate} (aggregate `{name}`), each at the same id as on "
                "the log, appended with it in one script call on the aggregate's expected "
                "version. " + _ENTRY
            ),
            "messages": _messages(types),
            "x-redis-key": keys.aggregate_stream(name, PARTITION),
        }
    channels["deadLetters"] = {
        "address": None,
        "title": "A consumer group's dead letters",
        "description": "Entries the group could not decode, or whose handler kept failing.",
        "messages": {"DeadLetter": _ref(MESSAGES, "DeadLetter")},
        "x-redis-key": keys.dead_letter_stream("<group>"),
    }
    operations: dict[str, Any] = {
        "append": {
            "action": "send",
            "channel": _ref("#/channels/", "log"),
            "summary": "Append events of one aggregate, to the log and its history at once.",
            "messages": [_ref("#/channels/log/messages/", cls.__name__) for cls in ALL_EVENT_TYPES],
        },
        "consume": {
            "action": "receive",
            "channel": _ref("#/channels/", "log"),
            "summary": "Each service's consumer group folds the log; an entry is acknowledged "
            "once handled.",
        },
        **{
            f"replay{aggregate.capitalize()}": {
                "action": "receive",
                "channel": _ref("#/channels/", f"{aggregate}History"),
                "summary": f"Read one {aggregate}'s history in order.",
            }
            for aggregate, _, _ in AGGREGATES
        },
        "deadLetter": {
            "action": "send",
            "channel": _ref("#/channels/", "deadLetters"),
            "summary": "Keep an entry nobody could handle, with the error; then acknowledge it.",
        },
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "runplane events",
            "version": version,
            "description": (
                "The event log of runplane, on Redis Streams (or Valkey): the streams events "
                "are on and every event type. A tag is permanent; its version changes with a "
                "rename or a type change, and older versions are upcast on read."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "log": {
                "host": "localhost:6379",
                "pathname": "/0",
                "protocol": "redis",
                "description": "The server RUNPLANE_REDIS_URL names.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def render(version: str) -> str:
    """The document as YAML, keys in the order built."""
    return yaml.safe_dump(document(version), sort_keys=False, allow_unicode=True, width=100)


def installed_version() -> str:
    """runplane's version, as installed (what ``info.version`` says)."""
    return metadata.version("runplane")


def main() -> int:
    sys.stdout.write(render(installed_version()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
