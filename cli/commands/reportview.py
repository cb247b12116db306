"""How billing and audit reports are asked for and shown: the options and output of ``mcli
billing``/``mcli audit`` (the read models, through the API) and of ``mcli admin report
billing|audit`` (the archive and the log themselves), one definition for both.

Billing shows GPU-milliseconds as GPU-hours (three places) and costs to the cent, each TOTAL
the exact sum rounded once (``projections.billing``); prices per GPU-hour come from
``RUNPLANE_GPU_PRICES`` (JSON, e.g. ``{"a100_80gb": "2.5"}``) when set.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

import msgspec
from rich.console import Group

from cli.commands.common import echo, moment, positive
from cli.errors import ClientError, UsageError
from cli.models import to_datetime
from cli.render import make_console, plain_table, when
from projections.audit import Entry
from projections.billing import DIMENSIONS, ROW_FIELDS, Report, shown_cost, shown_hours

OUTPUTS = ("table", "csv", "json")


def add_window(parser: argparse.ArgumentParser, example: str) -> None:
    """``--since`` and ``--until``: dates, or times ago."""
    parser.add_argument("--since", type=moment, help=f"from (date, or a time ago: {example})")
    parser.add_argument("--until", type=moment, help="to (date, or a time ago)")


def add_billing(parser: argparse.ArgumentParser) -> None:
    """``--by``, the window and ``--output`` of a bill."""
    parser.add_argument("--by", choices=DIMENSIONS, default="user", help="group by (user)")
    add_window(parser, "7d")
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table")


def add_audit(parser: argparse.ArgumentParser) -> None:
    """``--user``, ``--run``, the window, ``--limit`` and ``--output`` of an audit."""
    parser.add_argument("-u", "--user", help="only this actor (a user, or service@host)")
    parser.add_argument("-r", "--run", help="only this run")
    add_window(parser, "1d")
    parser.add_argument("--limit", type=positive, default=1000)
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")


def window_of(args: argparse.Namespace, now: int) -> tuple[int, int] | None:
    """[--since, --until) in ms (None: all time); a window that ends before it starts is a
    usage error."""
    if args.since is None and args.until is None:
        return None
    window = (args.since or 0, args.until if args.until is not None else now)
    if window[1] <= window[0]:
        raise UsageError(
            f"the window ends before it starts (--since {_shown_ms(window[0])}, "
            f"--until {_shown_ms(window[1])}): give a --since before --until"
        )
    return window


def _shown_ms(ms: int) -> str:
    moment_ = to_datetime(ms)
    return moment_.isoformat(timespec="seconds") if moment_ is not None else str(ms)


def prices() -> dict[str, str]:
    """The prices per GPU-hour the user gives (``RUNPLANE_GPU_PRICES``), checked."""
    text = os.environ.get("RUNPLANE_GPU_PRICES")
    if not text:
        return {}
    try:
        raw = json.loads(text)
        return {str(k): str(Decimal(str(v))) for k, v in raw.items()}
    except (ValueError, AttributeError, InvalidOperation):
        raise ClientError(
            'RUNPLANE_GPU_PRICES must be JSON like {"a100_80gb": "2.5"} (price per GPU-hour)'
        ) from None


def show_billing(report: Report, names: dict[str, str], output: str) -> None:
    """The bill as ``output`` asks: a table, CSV or JSON (runs by their names in ``names``)."""
    rows = report.rows(names)
    if output == "json":
        total = {
            "gpu_ms": report.gpu_ms,
            "cost": None if report.cost is None else str(shown_cost(report.cost)),
            "open": report.open,
            "unpriced_gpu_ms": report.unpriced_ms,
            "unpriced_gpu_types": report.unpriced_types,
        }
        per = {} if report.per is None else {"per": report.per}
        echo(json.dumps({"group_by": report.group_by, **per, "lines": rows, **total}))
        return
    if output == "csv":
        fields = [*_period(report), report.group_by, *ROW_FIELDS]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return
    if not rows:
        echo("No GPU usage found.")
        return
    make_console().print(billing_table(report, report.group_by, names))


def _period(report: Report) -> list[str]:
    return [] if report.per is None else [report.per]


def _percent(utilization: int | None) -> str:
    return "-" if utilization is None else f"{utilization}%"


def billing_table(report: Report, by: str, names: dict[str, str]) -> Group:
    """The report as a table: a line per group (per period, in a report per day or month) and
    the TOTAL, each rounded (hours to 3 places, cost to 2), then what the marks mean. An open
    line's ``*`` marks the TOTAL too; unpriced GPU-hours get their own column; if the rounded
    lines do not add up to the rounded TOTAL, a note says so."""
    unpriced = report.unpriced_ms > 0
    sampled = any(line.sampled_gpu_ms for line in report.lines)
    headers = [p.upper() for p in _period(report)] + [by.upper(), "GPU_HOURS", "COST"]
    headers += ["UNPRICED_GPU_HOURS"] if unpriced else []
    headers += ["GPU_UTIL"] if sampled else []  # mean, over the GPU-hours NVML sampled
    table = plain_table(*headers)
    columns: list[list[Decimal]] = [[], [], []]
    for line in report.lines:
        cells = [
            shown_hours(line.gpu_ms),
            shown_cost(line.cost or Decimal(0)),
            shown_hours(line.unpriced_ms),
        ]
        for column, cell in zip(columns, cells, strict=True):
            column.append(cell)
        table.add_row(
            *([line.period or ""] if report.per is not None else []),
            names.get(line.key, line.key),
            f"{cells[0]}{' *' if line.open else ''}",
            "-" if line.cost is None else str(cells[1]),
            *([str(cells[2])] if unpriced else []),
            *([_percent(line.gpu_utilization)] if sampled else []),
        )
    totals = [
        shown_hours(report.gpu_ms),
        shown_cost(report.cost or Decimal(0)),
        shown_hours(report.unpriced_ms),
    ]
    table.add_row(
        *([""] if report.per is not None else []),
        "TOTAL",
        f"{totals[0]}{' *' if report.open else ''}",
        "-" if report.cost is None else str(totals[1]),
        *([str(totals[2])] if unpriced else []),
        *([_percent(report.gpu_utilization)] if sampled else []),
    )
    notes: list[str] = []
    if report.open:
        notes.append("* includes runs still holding GPUs, counted up to now")
    if unpriced:
        notes.append(
            f"UNPRICED_GPU_HOURS: {', '.join(report.unpriced_types)} "
            "(no price in RUNPLANE_GPU_PRICES), not in COST"
        )
    if any(sum(column) != total for column, total in zip(columns, totals, strict=True)):
        notes.append("Lines are rounded: each TOTAL is the exact sum, rounded once")
    return Group(table, *notes)


def show_audit(entries: Sequence[Entry], output: str) -> None:
    """Audit entries as ``output`` asks: a table or JSON."""
    if output == "json":
        echo(json.dumps(msgspec.to_builtins(entries)))
        return
    if not entries:
        echo("No audit entries found.")
        return
    table = plain_table("TIME", "ACTOR", "ACTION", "RUN", "RESUMPTION", "DETAIL")
    for entry in entries:
        table.add_row(
            when(to_datetime(entry.time)),
            entry.actor if entry.via is None else f"{entry.actor} ({entry.via})",
            entry.action,
            entry.run_name or entry.node or entry.user or "",
            "" if entry.attempt is None else str(entry.attempt),
            entry.detail,
        )
    make_console().print(table)
