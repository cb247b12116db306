"""Rebuilding several projections at once, spread over processes ("lanes").

``rebuild_many`` splits the projections as ``projections.lanes.plan`` says and runs each group
in its own process (``python -m services.projector.lanes``): its own connection, one pass over
the whole log, its own builds and commits. With one lane (or one projection) everything runs
in the calling process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence

import msgspec
import structlog

from projections.catalog import make
from projections.lanes import LaneFailed, default_lanes, drop_unfinished, plan
from projections.rebuild import rebuild
from services.core.archive import ArchivedLog
from services.core.client import connect_with
from services.core.settings import Settings

log = structlog.get_logger("services.projector.lanes")


async def rebuild_many(
    settings: Settings,
    names: Sequence[str],
    *,
    now_ms: int,
    switch: bool = True,
    lanes: int | None = None,
) -> dict[str, str]:
    """Rebuild ``names`` from position zero on the server ``settings`` name, over ``lanes``
    processes (default: one per core). Returns each projection's new namespace, by name.

    Every projection is rebuilt as ``projections.rebuild.rebuild`` would; with ``switch`` readers
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
        _here(settings, groups[0], now_ms, switch),
        *(_lane(settings, group, now_ms, switch) for group in groups[1:]),
    )
    failed = [(group, why) for group, (_, why) in zip(groups, done, strict=True) if why]
    if failed:
        client = connect_with(settings)
        try:
            await drop_unfinished(client, [n for group, _ in failed for n in group], now_ms)
        finally:
            await client.aclose()
        raise LaneFailed(*failed[0])
    return {name: namespace for built, _ in done for name, namespace in built.items()}


async def _here(
    settings: Settings, names: list[str], now_ms: int, switch: bool
) -> tuple[dict[str, str], str]:
    """One lane in this process: (namespaces, "") or ({}, its error)."""
    try:
        return await _rebuild(settings, names, now_ms, switch), ""
    except Exception as exc:  # noqa: BLE001 - reported with the other lanes' errors
        return {}, f"{type(exc).__name__}: {exc}"


async def _lane(
    settings: Settings, names: list[str], now_ms: int, switch: bool
) -> tuple[dict[str, str], str]:
    """One lane as ``python -m services.projector.lanes``: (namespaces, "") or ({}, its error).
    The server and the login go in its environment (a password only as its file's name)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.projector.lanes",
        str(now_ms),
        "switch" if switch else "keep",
        *names,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**_without_login(os.environ), **settings.redis_env()},
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


async def _rebuild(
    settings: Settings, names: list[str], now_ms: int, switch: bool
) -> dict[str, str]:
    client = connect_with(settings)
    try:
        readers = [ArchivedLog(client, p) for p in range(settings.partitions)]
        return await rebuild(client, names, now_ms=now_ms, switch=switch, reader=readers)
    finally:
        await client.aclose()


def _without_login(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without a server or login of its own (the lane gets the caller's)."""
    return {
        name: value for name, value in environ.items() if not name.startswith("RUNPLANE_REDIS_")
    }


def main(argv: Sequence[str]) -> int:
    """``python -m services.projector.lanes NOW_MS switch|keep NAME...``: one lane, on the server
    the ``RUNPLANE_REDIS_*`` variables name; prints the namespaces it built as JSON, or its error
    as the last line of stderr (exit 1)."""
    now_ms, switch, *names = argv
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: result
    try:
        built = asyncio.run(_rebuild(Settings(), names, int(now_ms), switch == "switch"))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, one line
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.buffer.write(msgspec.json.encode(built))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
