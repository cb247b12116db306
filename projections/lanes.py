"""Rebuilding several projections at once, spread over processes ("lanes").

A rebuild is CPU-bound in one Python process: reading, decoding, folding, rendering the rows
and encoding the commits of all five projections take about three times the CPU the server
spends serving the reads and storing the rows.
``rebuild_many`` splits the projections into ``lanes`` groups of about equal cost (``COST``)
and runs each group in its own process: its own connection, one pass over the whole log, its
own builds and commits. The groups share nothing but the server, so each projection's build is
exactly the one ``projections.runner.rebuild_into`` makes alone (same rows, same checkpoint),
and a lane that fails leaves the other lanes' builds standing.

With one lane (or one projection) everything runs in the calling process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

import msgspec
import structlog

from projections.catalog import make
from projections.errors import ProjectionsError
from projections.runner import rebuild, rebuild_namespace
from projections.storage import RedisStore
from services.core.store import connect

log = structlog.get_logger("projections.lanes")

#: Relative CPU cost of folding, rendering and storing each projection, beyond reading and
#: decoding the log (measured alone on the 1M-event log of ``bench.projections``: attempts
#: 4.7 s, audit 3.6, run_status 2.5, utilization 1.3, billing 1.1). Unknown names weigh 1.
COST: dict[str, int] = {"attempts": 4, "audit": 4, "run_status": 2, "billing": 1, "utilization": 1}


def default_lanes(names: Sequence[str]) -> int:
    """One lane per core, never more than there are projections."""
    return max(1, min(len(names), os.cpu_count() or 1))


def plan(names: Sequence[str], lanes: int) -> list[list[str]]:
    """The projections of each lane: the costliest first, each to the lane with least so far.

    Deterministic for the same names and lanes; no lane is empty."""
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, not {lanes}")
    groups: list[list[str]] = [[] for _ in range(min(lanes, len(names)))]
    loads = [0] * len(groups)
    for name in sorted(names, key=lambda n: (-COST.get(n, 1), n)):
        lane = loads.index(min(loads))
        groups[lane].append(name)
        loads[lane] += COST.get(name, 1)
    return groups


async def rebuild_many(
    url: str,
    names: Sequence[str],
    *,
    now_ms: int,
    switch: bool = True,
    lanes: int | None = None,
) -> dict[str, str]:
    """Rebuild ``names`` from position zero on the server at ``url``, over ``lanes`` processes
    (default: one per core). Returns each projection's new namespace, by name.

    Every projection is rebuilt as ``projections.runner.rebuild`` would; with ``switch`` readers
    move to each one as its lane catches up. If a lane fails, its unfinished builds are dropped
    and ``LaneFailed`` names it and its error once every lane has ended (the other lanes'
    builds stand)."""
    for name in names:
        make(name)  # an unknown name fails here, before any process starts
    if not names:
        return {}
    groups = plan(names, lanes if lanes is not None else default_lanes(names))
    if len(groups) > 1:
        log.info("projections.lanes", lanes=groups)
    done = await asyncio.gather(  # the first lane here (no start-up), the others in processes
        _here(url, groups[0], now_ms, switch),
        *(_lane(url, group, now_ms, switch) for group in groups[1:]),
    )
    failed = [(group, why) for group, (_, why) in zip(groups, done, strict=True) if why]
    if failed:
        await drop_unfinished(url, [name for group, _ in failed for name in group], now_ms)
        raise LaneFailed(*failed[0])
    return {name: namespace for built, _ in done for name, namespace in built.items()}


async def drop_unfinished(url: str, names: Sequence[str], now_ms: int) -> None:
    """Drop the builds a rebuild at ``now_ms`` left unfinished (never one readers read: a
    lane switches all its projections in its last commit, or none). Best effort: a failure
    here is logged, and the lane's own error is what the caller reports."""
    try:
        client = connect(url)
        try:
            store = RedisStore(client)
            for name in names:
                namespace = rebuild_namespace(make(name), now_ms)
                if await store.active(name) != namespace:
                    dropped = await store.drop(name, namespace)
                    log.info(
                        "projection.dropped", projection=name, namespace=namespace, keys=dropped
                    )
        finally:
            await client.aclose()
    except Exception as exc:  # noqa: BLE001 - best effort, see above
        log.warning("projection.drop_failed", projections=list(names), error=str(exc))


class LaneFailed(ProjectionsError):
    def __init__(self, names: list[str], why: str) -> None:
        super().__init__(f"rebuilding {', '.join(names)} failed: {why}")
        self.names = names


async def _here(
    url: str, names: list[str], now_ms: int, switch: bool
) -> tuple[dict[str, str], str]:
    """One lane in this process: (namespaces, "") or ({}, its error)."""
    try:
        return await _rebuild(url, names, now_ms, switch), ""
    except Exception as exc:  # noqa: BLE001 - reported with the other lanes' errors
        return {}, f"{type(exc).__name__}: {exc}"


async def _lane(
    url: str, names: list[str], now_ms: int, switch: bool
) -> tuple[dict[str, str], str]:
    """Run one lane as ``python -m projections.lanes``: (namespaces, "") or ({}, its error)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "projections.lanes",
        url,
        str(now_ms),
        "switch" if switch else "keep",
        *names,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await process.communicate()
    except BaseException:  # cancelled: the lane goes too
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode == 0:
        return msgspec.json.decode(out, type=dict[str, str]), ""
    lines = err.decode(errors="replace").strip().splitlines()
    return {}, lines[-1] if lines else f"exit code {process.returncode}"


async def _rebuild(url: str, names: list[str], now_ms: int, switch: bool) -> dict[str, str]:
    client = connect(url)
    try:
        return await rebuild(client, names, now_ms=now_ms, switch=switch)
    finally:
        await client.aclose()


def main(argv: Sequence[str]) -> int:
    """``python -m projections.lanes URL NOW_MS switch|keep NAME...``: one lane; prints the
    namespaces it built as JSON, or its error as the last line of stderr (exit 1)."""
    url, now_ms, switch, *names = argv
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: result
    try:
        built = asyncio.run(_rebuild(url, names, int(now_ms), switch == "switch"))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, one line
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.buffer.write(msgspec.json.encode(built))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
