"""Ingest entries as the shim builds them: the format of ``services.output.ingest``, without it.

``services.output.ingest`` imports redis-py, which the shim must not load (see ``resp``); the
entries built here are the same, field for field, as ``output.ingest_fields`` and
``output.dropped_fields`` build (a property test pins it). A line reaches here already cut to
``MAX_LINE`` by ``LineSplitter``, with the number of bytes cut.

Standard library only.
"""

from __future__ import annotations

from services.node_agent.shim.buffer import Entry

STDOUT, STDERR = b"o", b"e"


class Entries:
    """The entries of one rank of one attempt."""

    def __init__(self, run_id: str, attempt: int, rank: int) -> None:
        self.where = {b"r": run_id.encode(), b"a": b"%d" % attempt, b"k": b"%d" % rank}

    def line(self, source: bytes, line: bytes, cut: int = 0) -> Entry:
        entry = {**self.where, b"s": source, b"l": line}
        if cut:
            entry[b"m"] = b"truncated:%d" % cut
        return entry

    def dropped(self, count: int) -> Entry:
        note = (
            b"[runplane] %d lines of output were dropped: the rank wrote faster than the log "
            % count
            + b"could take them"
        )
        entry = self.line(STDERR, note)
        entry[b"m"] = b"dropped:%d" % count
        return entry
