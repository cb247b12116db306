"""Which output of a run to show: the attempt (mcli: resumption) and the rank. One rule for
``mcli logs`` and the SDK (``cli/logsel.py``) and the API server's ``getRunLogsV2``.

Rules (mcli's):
- the attempt is the latest unless one is asked for; one the run does not have is an error
  naming the ones it has;
- the rank is the one asked for, which the attempt must have; else, when ``failed``, the first
  rank that failed (by log order, as the log-collector recorded it; until it has, the one the
  caller's fold names), or None when none did (the caller says whether that is an error, as
  ``--failed`` makes it, or rank 0: a FAILED resumption whose node was lost, say); else rank 0.

Errors are ``NoSuchOutput``, with the message to show; the caller gives it its own type.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from services.output import reading


class NoSuchOutput(Exception):
    """The run has no such attempt or rank."""


def attempt_index(run: str, latest: int, asked: int | None) -> int:
    """The attempt to show: ``asked``, or the latest."""
    if asked is None:
        return latest
    if not 0 <= asked <= latest:
        raise NoSuchOutput(f"Run {run} has no resumption {asked} (it has 0 to {latest})")
    return asked


async def node_rank(
    client: aioredis.Redis,
    run: str,
    run_id: str,
    attempt: int,
    node_count: int | None,
    *,
    rank: int | None,
    failed: bool,
    folded_failure: int | None,
) -> int | None:
    """The rank to show of ``attempt`` (``node_count`` ranks; None: not placed yet, so any
    rank may come), None for ``failed`` when no rank failed; ``folded_failure`` is the first
    failed rank the caller's fold knows, if any."""
    if rank is not None:
        if rank < 0 or (node_count is not None and rank >= node_count):
            raise NoSuchOutput(
                f"Run {run} resumption {attempt} has ranks 0 to {(node_count or 1) - 1}, not {rank}"
            )
        return rank
    if not failed:
        return 0
    first = await reading.first_failed_rank(client, run_id, attempt)
    return folded_failure if first is None else first
