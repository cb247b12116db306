"""``mcli admin archive --before DURATION``: an operator's command that moves the global log's
entries older than DURATION (and read by every consumer group and projection) to Parquet
segments, then trims them from the server (``services.core.archiver``).

It works on the log and the archive's directory themselves, as ``projections rebuild`` does:
the operator's login (``RUNPLANE_REDIS_URL`` and its login, or the local stack's) and a
directory on this host (``--dir``, else ``RUNPLANE_EVENT_ARCHIVE``, else the local stack's
``event-archive/``). The API server has neither the right to trim the log nor the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from cli.commands.common import echo
from cli.criteria import duration_s
from cli.errors import ClientError
from cli.stack import operator_settings, state_dir
from cli.stackfiles import event_archive_dir
from services.core.archive import ArchiveBusy, ArchiveMissing, ArchiveSettings
from services.core.archiver import CUT_OFF, Archived, ArchiveMoved, archive_older
from services.core.client import connect_with
from services.core.settings import Settings


def register(kinds: Any) -> None:
    archive = kinds.add_parser(
        "archive",
        help="an operator's command: move the log's old entries to Parquet, then trim them "
        "(safe to run again if cut short)",
    )
    archive.add_argument(
        "--before",
        type=_span,
        required=True,
        metavar="DURATION",
        help="entries older than this (7d, 12h); only what every reader is done with",
    )
    archive.add_argument(
        "--dir",
        type=Path,
        metavar="PATH",
        help="the archive's directory (default: $RUNPLANE_EVENT_ARCHIVE, else the local stack's)",
    )
    archive.set_defaults(handler=archive_events)


def _span(text: str) -> float:
    try:
        return duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def archive_dir(given: Path | None) -> Path:
    """``--dir``, else ``RUNPLANE_EVENT_ARCHIVE``, else the local stack's ``event-archive/``
    (only without ``RUNPLANE_REDIS_URL``: a deployment names its own)."""
    if given is not None:
        return given
    configured = ArchiveSettings().event_archive
    if configured is not None:
        return configured
    if os.environ.get("RUNPLANE_REDIS_URL"):
        raise ClientError(
            "where to archive to? Set RUNPLANE_EVENT_ARCHIVE (or --dir) to a directory that "
            "stays with this deployment"
        )
    return event_archive_dir(state_dir())


def archive_events(args: argparse.Namespace) -> int:
    root = archive_dir(args.dir)
    try:
        done = asyncio.run(_archive(operator_settings(), root, args.before))
    except (ArchiveMoved, ArchiveBusy, ArchiveMissing) as refused:
        raise ClientError(str(refused)) from None
    echo(summary(done))
    return 0


def summary(done: Archived) -> str:
    line = f"archived {done.events} events of {done.runs} runs"
    if done.trimmed:
        line += f"; trimmed {done.trimmed} entries from the log (up to {done.upto})"
    if done.retired:
        line += f"; {done.retired} runs at rest now read from the archive"
    if done.held_by != CUT_OFF:
        line += f"; newer entries wait for {done.held_by}"
    return line


async def _archive(settings: Settings, root: Path, before_s: float) -> Archived:
    client = connect_with(settings)
    try:
        return await archive_older(
            client, root, older_than_s=before_s, partitions=settings.partitions
        )
    finally:
        await client.aclose()
