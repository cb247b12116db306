"""A run's metadata: what an update changes, its size, and the values JSON can carry.

Metadata is a JSON object of keys and values; an update merges into it (the keys given take
their values, the others stay). Invariants, kept here and nowhere else:
- an update's change is only the keys whose value differs from the run's, compared as JSON
  values (``1`` and ``1.0`` are one number, ``true`` is not ``1``, an object's key order does
  not count), so a client that resends the same values (Composer's logger, on its interval)
  changes nothing and nothing is appended;
- a run's metadata is measured as compact UTF-8 JSON (``size``), as the log stores it; the
  limit on it is a rule of ``events.commands``;
- NaN and the infinities, which JSON cannot carry, travel as the strings ``"NaN"``,
  ``"Infinity"`` and ``"-Infinity"``, as mcli sends them (``reference/mapi.md`` section 5.7).
Pure: no IO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

#: What NaN and the infinities become, as mcli's SDK turns them into strings.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def carried(value: Any) -> Any:
    """``value`` with every NaN and infinity, at any depth, as the string mcli sends for it."""
    if isinstance(value, float) and not math.isfinite(value):
        return NON_FINITE[repr(value)]
    if isinstance(value, Mapping):
        return {key: carried(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [carried(item) for item in value]
    return value


def same(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are one JSON value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) or isinstance(b, int | float):
        return isinstance(a, int | float) and isinstance(b, int | float) and a == b
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(same(a[key], b[key]) for key in a)
        )
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return (
            isinstance(a, list | tuple)
            and isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and bool(a == b)


def changes(current: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``given`` whose value changes ``current`` (new keys, or other values)."""
    return {
        key: value
        for key, value in given.items()
        if key not in current or not same(current[key], value)
    }


def size(metadata: Mapping[str, Any]) -> int:
    """Bytes of ``metadata`` as compact UTF-8 JSON, as the log stores it."""
    return len(msgspec.json.encode(metadata))
