"""What one batch of ingest entries becomes: writes to per-rank streams (pure, no IO).

Invariants:
- A well-formed entry becomes exactly one write, to its rank's stream, under the entry's own id,
  with only the line's fields (``s``, ``l``, ``m``): run, attempt and rank are in the key.
- No stored line is longer than ``output.MAX_LINE``: the rest is cut and the marker says how
  many bytes in all (adding to what the agent already cut).
- An entry that is not a line (a field missing, a bad number) is rejected with the reason, for
  the dead letters; nothing is dropped silently. Order is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from events import keys
from services.output.ingest import MAX_LINE

RawEntry = tuple[bytes, dict[bytes, bytes]]
Where = tuple[str, int, int]  # run id, attempt, rank


class Write(NamedTuple):
    stream: str
    id: bytes
    fields: dict[bytes, bytes]
    where: Where


class Reject(NamedTuple):
    id: bytes
    fields: dict[bytes, bytes]
    why: str


class Plan(NamedTuple):
    writes: list[Write]
    rejects: list[Reject]
    ranks: dict[tuple[str, int], set[int]]  # the ranks each attempt's lines came from


def cap(line: bytes, marker: bytes | None) -> tuple[bytes, bytes | None]:
    """The line cut to ``MAX_LINE`` bytes, and its marker counting every byte cut."""
    if len(line) <= MAX_LINE:
        return line, marker
    cut = len(line) - MAX_LINE
    others: list[bytes] = []
    for one in marker.split(b",") if marker else []:
        kind, _, value = one.partition(b":")
        if kind == b"truncated" and value.isdigit():
            cut += int(value)
        else:
            others.append(one)
    return line[:MAX_LINE], b",".join([b"truncated:%d" % cut, *others])


def _where(fields: dict[bytes, bytes]) -> Where | str:
    try:
        run, attempt, rank = fields[b"r"], fields[b"a"], fields[b"k"]
    except KeyError as missing:
        return f"not an output line: field {missing.args[0]!r} missing"
    if not (attempt.isdigit() and rank.isdigit()) or not run:
        return f"not an output line: run {run!r}, attempt {attempt!r}, rank {rank!r}"
    return run.decode(errors="replace"), int(attempt), int(rank)


def plan(entries: Iterable[RawEntry]) -> Plan:
    writes: list[Write] = []
    rejects: list[Reject] = []
    ranks: dict[tuple[str, int], set[int]] = {}
    streams: dict[Where, str] = {}
    for entry_id, fields in entries:
        where = _where(fields)
        if isinstance(where, str):
            rejects.append(Reject(entry_id, fields, where))
            continue
        if b"l" not in fields:
            rejects.append(Reject(entry_id, fields, "not an output line: field b'l' missing"))
            continue
        stream = streams.get(where)
        if stream is None:
            stream = streams[where] = keys.rank_log(*where)
            ranks.setdefault(where[:2], set()).add(where[2])
        line, marker = cap(fields[b"l"], fields.get(b"m"))
        stored = {b"s": fields.get(b"s", b"o"), b"l": line}
        if marker:
            stored[b"m"] = marker
        writes.append(Write(stream, entry_id, stored, where))
    return Plan(writes, rejects, ranks)
