"""Run output as it is stored: a line's record, an attempt's meta, and the archive's files
(``<archive_dir>/<run>/<attempt>/rank-<k>.log``: one JSON record a line; ``meta.json``).

Where each is, and how a reader finds it live or archived: ``services.output.reading``.
Invariant: a record keeps a line's bytes as they came (``line`` when valid UTF-8, else
``blob``); text is decoded with replacement only for display.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec

FIRST_FAILED_RANK = "first_failed_rank"
FIRST_FAILED_AT = "first_failed_at"  # the position of that rank.exited in the log
TERMINAL_AT = "terminal_at"  # the position of the attempt's terminal event
_SOURCES = {"o": "stdout", "e": "stderr"}

#: The attempt's meta: the attempt hash's fields and values, decoded.
Meta = dict[str, str]


def lines_field(rank: int) -> str:
    """Attempt hash field: lines stored for the rank (exact once archived)."""
    return f"lines:{rank}"


def archive_field(rank: int) -> str:
    """Attempt hash field: the rank's archive file, relative to the archive dir."""
    return f"archive:{rank}"


def archive_path(run_id: str, attempt: int, rank: int) -> Path:
    return Path(run_id) / str(attempt) / f"rank-{rank}.log"


def meta_path(run_id: str, attempt: int) -> Path:
    """Where the attempt hash goes once moved, relative to the archive dir."""
    return Path(run_id) / str(attempt) / "meta.json"


def ranks_of(meta: Meta) -> list[int]:
    """The ranks that wrote output, from the attempt's meta."""
    return sorted(int(field[6:]) for field in meta if field.startswith("lines:"))


class LogLine(NamedTuple):
    time_ms: int  # the line's time on the server's clock
    source: str  # "stdout" or "stderr"
    text: str
    marker: str | None  # what runplane did to the line, for humans
    id: str = ""  # where the line is in the rank's output: continue after it

    def render(self) -> str:
        return self.text + marker_suffix(self.marker)


class Record(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One stored line: an archive file line (JSON) and a reply item (msgpack)."""

    id: str
    t: int
    s: str
    line: str | None = msgspec.field(default=None, name="l")  # the bytes, when valid UTF-8
    blob: bytes | None = msgspec.field(default=None, name="b")  # the bytes otherwise
    marker: str | None = msgspec.field(default=None, name="m")

    @property
    def raw(self) -> bytes:
        return self.blob if self.blob is not None else (self.line or "").encode()

    def shown(self) -> bytes:
        """The line as ``mcli logs`` prints it, in bytes: as it came, its marker, a newline."""
        return self.raw + marker_suffix(render_marker(self.marker)).encode() + b"\n"

    def to_line(self) -> LogLine:
        text = self.line if self.line is not None else self.raw.decode(errors="replace")
        return LogLine(
            self.t, _SOURCES.get(self.s, self.s), text, render_marker(self.marker), self.id
        )


def record_of(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Record:
    """The record of a per-rank stream entry."""
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    raw = fields.get(b"l", b"")
    marker = fields.get(b"m")
    record = Record(
        id=ident,
        t=int(ident.split("-", 1)[0]),
        s=fields.get(b"s", b"o").decode(errors="replace"),
        marker=marker.decode(errors="replace") if marker else None,
    )
    try:
        record.line = raw.decode()
    except UnicodeDecodeError:
        record.blob = raw
    return record


def render_marker(marker: str | None) -> str | None:
    """``truncated:12`` -> ``… [line truncated: 12 bytes cut]``; several are comma-separated."""
    if not marker:
        return None
    shown = []
    for one in marker.split(","):
        kind, _, value = one.partition(":")
        if kind == "truncated":
            shown.append(f"… [line truncated: {value} bytes cut]")
        elif kind == "dropped":
            shown.append(f"[{value} lines dropped]")
        elif kind == "late":
            shown.append(f"[stored out of order; sent at {value}]")
        else:
            shown.append(f"[{one}]")
    return " ".join(shown)


def marker_suffix(shown: str | None) -> str:
    """What follows a line's text for its rendered marker: ``…`` ones at once, others after a
    space."""
    if shown is None:
        return ""
    return shown if shown.startswith("…") else f" {shown}"


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# --- archive files ---------------------------------------------------------------------------

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(Record).decode


def encode_record(record: Record) -> bytes:
    return _json_encode(record) + b"\n"


def decode_record(line: bytes) -> Record:
    return _json_decode(line)


_meta_encode = msgspec.json.Encoder(order="sorted").encode
_meta_decode = msgspec.json.Decoder(Meta).decode


def encode_meta(meta: Meta) -> bytes:
    return _meta_encode(meta) + b"\n"


def read_meta_file(path: Path) -> Meta | None:
    """The meta moved to ``path``; None if there is no such file."""
    try:
        return _meta_decode(path.read_bytes())
    except FileNotFoundError:
        return None


def archive_records(
    path: Path, *, after: str | None = None, tail: int | None = None
) -> Iterator[Record]:
    """The records of an archive file after id ``after``, or its last ``tail`` records."""
    if tail is not None:
        records = tail_records(path, tail)
        yield from (r for r in records if after is None or id_key(r.id) > id_key(after))
        return
    floor = id_key(after) if after is not None else None
    with path.open("rb") as file:
        for line in file:
            record = decode_record(line)
            if floor is None or id_key(record.id) > floor:
                yield record


def tail_records(path: Path, count: int, block: int = 64 * 1024) -> list[Record]:
    """The last ``count`` records of an archive file, reading it backwards from the end."""
    if count <= 0:
        return []
    with path.open("rb") as file:
        end = file.seek(0, 2)
        data = b""
        start = end
        while start > 0 and data.count(b"\n") <= count:
            start = max(0, start - block)
            file.seek(start)
            data = file.read(end - start)
    lines = data.split(b"\n")[:-1]  # every record ends with a newline
    if start > 0:
        lines = lines[1:]  # the first one may be cut
    return [decode_record(line) for line in lines[-count:]]
