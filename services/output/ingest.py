"""Run output on its way to the log-collector: the ingest stream's entry format and its writer.

An ingest entry (``keys.log_ingest()``) has the fields ``r`` run id, ``a`` attempt, ``k`` rank,
``s`` ``o`` (stdout) or ``e`` (stderr), ``l`` the line's bytes without its newline, and, on a
line runplane altered, ``m`` a marker: ``truncated:<bytes cut>`` or ``dropped:<lines>`` (a
line of runplane's own saying how many lines a flood lost). The entry id is the line's
timestamp, on the server's clock.

Invariants: a line is never longer than ``MAX_LINE`` bytes (the rest is cut and marked); lines
are never dropped silently (a dropped-lines marker takes their place); bytes are stored as they
came (readers decode with replacement).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from events import keys
from services.core.client import check_replicated, wait_after

MAX_LINE = 64 * 1024
STDOUT, STDERR = b"o", b"e"


def truncate(line: bytes) -> tuple[bytes, bytes | None]:
    """The line as stored and its marker, if it had to be cut."""
    if len(line) <= MAX_LINE:
        return line, None
    return line[:MAX_LINE], b"truncated:%d" % (len(line) - MAX_LINE)


def ingest_fields(
    run_id: str, attempt: int, rank: int, source: bytes, line: bytes
) -> dict[bytes, bytes]:
    stored, marker = truncate(line)
    fields = {
        b"r": run_id.encode(),
        b"a": b"%d" % attempt,
        b"k": b"%d" % rank,
        b"s": source,
        b"l": stored,
    }
    if marker is not None:
        fields[b"m"] = marker
    return fields


def dropped_fields(run_id: str, attempt: int, rank: int, count: int) -> dict[bytes, bytes]:
    note = (
        b"[runplane] %d lines of output were dropped: the rank wrote faster than the log " % (count)
        + b"could take them"
    )
    fields = ingest_fields(run_id, attempt, rank, STDERR, note)
    fields[b"m"] = b"dropped:%d" % count
    return fields


async def send(client: aioredis.Redis, entries: Sequence[dict[bytes, bytes]]) -> None:
    """Append lines to the ingest stream in one round trip, in order; acknowledged once the
    replicas ``client`` waits for hold them (``services.core.client.wait_after``), else
    ``NotReplicated`` (a ``RedisError``: sent again, at least once)."""
    pipe = client.pipeline(transaction=False)
    stream = keys.log_ingest()
    for fields in entries:
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
    waits = await wait_after(pipe, client, [stream])
    replies = await pipe.execute()
    check_replicated(client, replies[len(replies) - waits :])
