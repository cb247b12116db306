"""``mcli admin report billing|audit``: an operator's long-range reports (a year's bill by user
by month, an audit over months), computed over the archive's Parquet segments and the live
tail of the log (``services.core.reports``), never by loading the archive into Valkey.

Like ``mcli admin archive`` it works on the log and the archive's directory themselves: the
operator's login (``RUNPLANE_REDIS_URL`` and its login, or the local stack's) and the archive's
directory on this host (``--dir``, else ``RUNPLANE_EVENT_ARCHIVE``, else the local stack's).
Its options and output are ``mcli billing``'s and ``mcli audit``'s (``cli.commands.reportview``),
with ``--per day|month`` for a bill split by period.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cli.commands.archive import archive_dir
from cli.commands.common import echo
from cli.commands.reportview import (
    add_audit,
    add_billing,
    prices,
    show_audit,
    show_billing,
    window_of,
)
from cli.errors import ClientError
from cli.models import now_ms
from cli.stack import operator_settings
from projections.audit import Entry
from projections.billing import PERIODS, Report
from services.core.archive import ArchiveMissing, NoArchive

if TYPE_CHECKING:
    from services.core.reports import Tally
    from services.core.settings import Settings

T = TypeVar("T")


def register(kinds: Any) -> None:
    report = kinds.add_parser(
        "report",
        help="an operator's command: a bill or an audit over the whole log, archive included "
        "(read from its Parquet segments)",
    )
    which = report.add_subparsers(dest="report", metavar="REPORT", required=True)
    billing = which.add_parser("billing", help="GPU-hours and cost, grouped, over any span")
    add_billing(billing)
    billing.add_argument(
        "--per", choices=PERIODS, help="a line per day or month (UTC) of each group, too"
    )
    _add_where(billing)
    billing.set_defaults(handler=billing_report)
    audit = which.add_parser("audit", help="who did what, and when, over any span")
    add_audit(audit)
    _add_where(audit)
    audit.set_defaults(handler=audit_report)


def _add_where(parser: argparse.ArgumentParser) -> None:
    """``--dir``, where the archive is, and ``--quiet``, not to say what was read there."""
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="PATH",
        help="the archive's directory (default: $RUNPLANE_EVENT_ARCHIVE, else the local stack's)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no line on stderr of what was read"
    )


def billing_report(args: argparse.Namespace) -> int:
    now = now_ms()
    window = window_of(args, now)
    root = _root(args.dir)
    given = {k: Decimal(v) for k, v in prices().items()} or None

    async def main(settings: Settings) -> tuple[Report, dict[str, str], Tally]:
        from services.core import reports  # noqa: PLC0415 - pyarrow only for this command
        from services.core.client import connect_with  # noqa: PLC0415

        client = connect_with(settings)
        try:
            return await reports.billing_report(
                client,
                root,
                partitions=settings.partitions,
                group_by=args.by,
                per=args.per,
                window=window,
                now=now,
                prices=given,
            )
        finally:
            await client.aclose()

    report, names, tally = _run(main)
    show_billing(report, names, args.output)
    _read(args, tally)
    return 0


def audit_report(args: argparse.Namespace) -> int:
    window = window_of(args, now_ms())
    root = _root(args.dir)

    async def main(settings: Settings) -> tuple[list[Entry], Tally]:
        from services.core import reports  # noqa: PLC0415 - pyarrow only for this command
        from services.core.client import connect_with  # noqa: PLC0415

        client = connect_with(settings)
        try:
            return await reports.audit_entries(
                client,
                root,
                partitions=settings.partitions,
                window=window,
                user=args.user,
                run=args.run,
                limit=args.limit,
            )
        finally:
            await client.aclose()

    entries, tally = _run(main)
    show_audit(entries, args.output)
    _read(args, tally)
    return 0


def _root(given: Path | None) -> Path:
    """The archive's directory; one that is not there is an error before the log is asked."""
    root = archive_dir(given)
    if not root.is_dir():
        raise ClientError(str(NoArchive(root)))
    return root


def _run(main: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(main(operator_settings()))
    except (ArchiveMissing, NoArchive) as refused:
        raise ClientError(str(refused)) from None


def _read(args: argparse.Namespace, tally: Tally) -> None:
    """What the report read, on stderr (the report itself may be CSV or JSON on stdout)."""
    if args.quiet:
        return
    skipped = f", {tally.undecodable} undecodable skipped" if tally.undecodable else ""
    echo(
        f"read {tally.archived} events from the archive (up to {', '.join(tally.archived_upto)}) "
        f"and {tally.live} from the live log{skipped}",
        err=True,
    )
