"""runplane's own commands beyond mcli: ``billing``, ``audit``, ``events RUN`` and
``projections rebuild``.

Billing sums GPU-milliseconds from the billing read model (integers; shown as hours), priced
per GPU-hour from ``RUNPLANE_GPU_PRICES`` (JSON, e.g. ``{"a100_80gb": "2.5"}``) when set.
``events`` prints a run's own history, the ground truth every read model is folded from.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
from rich.console import Group

from cli.client import Client
from cli.commands.common import add_all_users, echo, moment, positive, success, with_client
from cli.errors import ClientError
from cli.models import now_ms, to_datetime
from cli.reads import named_run
from cli.render import make_console, plain_table, when
from cli.stack import operator_settings
from events.access import Action
from events.codec import Recorded
from events.model import SECRET_FIELDS, tag_of
from projections import catalog, query
from projections.billing import DIMENSIONS, ROW_FIELDS, Report, shown_cost, shown_hours
from projections.lanes import LaneFailed
from services.projector.lanes import rebuild_many

_ENVELOPE = ("type", "id", "actor", "time", "run_id", "attempt")
RECORD_KEYS = ("position", "version", "type")  # the log position, the run's version, the tag
_OWN_KEYS = {"position": "queue_position"}  # attempt.queued's place in its queue


def register(subparsers: Any) -> None:
    billing = subparsers.add_parser("billing", help="GPU-hours and cost, grouped")
    billing.add_argument("--by", choices=DIMENSIONS, default="user", help="group by (user)")
    billing.add_argument("--since", type=moment, help="from (date, or a time ago: 7d)")
    billing.add_argument("--until", type=moment, help="to (date, or a time ago)")
    billing.add_argument("-o", "--output", choices=("table", "csv", "json"), default="table")
    billing.set_defaults(handler=with_client(billing_report))

    audit = subparsers.add_parser("audit", help="who did what, and when")
    audit.add_argument("-u", "--user", help="only this actor (a user, or service@host)")
    audit.add_argument("-r", "--run", help="only this run")
    add_all_users(audit)
    audit.add_argument("--since", type=moment, help="from (date, or a time ago: 1d)")
    audit.add_argument("--until", type=moment, help="to (date, or a time ago)")
    audit.add_argument("--limit", type=positive, default=1000)
    audit.add_argument("-o", "--output", choices=("table", "json"), default="table")
    audit.set_defaults(handler=with_client(audit_trail))

    events = subparsers.add_parser("events", help="the raw event log of one run")
    events.add_argument("run", metavar="RUN")
    events.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_all_users(events)
    events.set_defaults(handler=with_client(run_events))

    projections = subparsers.add_parser("projections", help="the read models")
    actions = projections.add_subparsers(dest="action", metavar="{rebuild}", required=True)
    again = actions.add_parser("rebuild", help="fold a read model again from the whole log")
    again.add_argument(
        "name",
        nargs="?",
        choices=catalog.NAMES,
        metavar="NAME",
        help=f"one of {', '.join(catalog.NAMES)} (default: all)",
    )
    again.add_argument(
        "--lanes",
        type=positive,
        help="processes to spread the projections over (default: one per core)",
    )
    again.set_defaults(handler=rebuild_projections)


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


def _window(args: argparse.Namespace, now: int) -> tuple[int, int] | None:
    if args.since is None and args.until is None:
        return None
    return (args.since or 0, args.until or now)


async def billing_report(args: argparse.Namespace, client: Client) -> int:
    now = now_ms()
    report, names = await client.billing(
        args.by, window=_window(args, now), now=now, prices=prices() or None
    )
    rows = report.rows(names)
    if args.output == "json":
        total = {
            "gpu_ms": report.gpu_ms,
            "cost": None if report.cost is None else str(shown_cost(report.cost)),
            "open": report.open,
            "unpriced_gpu_ms": report.unpriced_ms,
            "unpriced_gpu_types": report.unpriced_types,
        }
        echo(json.dumps({"group_by": args.by, "lines": rows, **total}))
        return 0
    if args.output == "csv":
        fields = [args.by, *ROW_FIELDS]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return 0
    if not rows:
        echo("No GPU usage found.")
        return 0
    make_console().print(billing_table(report, args.by, names))
    return 0


def _percent(utilization: int | None) -> str:
    return "-" if utilization is None else f"{utilization}%"


def billing_table(report: Report, by: str, names: dict[str, str]) -> Group:
    """The report as a table: a line per group and the TOTAL, each rounded (hours to 3
    places, cost to 2), then what the marks mean. An open line's ``*`` marks the TOTAL too;
    unpriced GPU-hours get their own column; if the rounded lines do not add up to the
    rounded TOTAL, a note says so."""
    unpriced = report.unpriced_ms > 0
    sampled = any(line.sampled_gpu_ms for line in report.lines)
    headers = [by.upper(), "GPU_HOURS", "COST"] + (["UNPRICED_GPU_HOURS"] if unpriced else [])
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


async def audit_trail(args: argparse.Namespace, client: Client) -> int:
    run_uid = None
    if args.run is not None:  # an unknown run is a 404, another user's needs --all-users
        run_uid = (
            await named_run(client, args.run, Action.AUDIT, all_users=args.all_users)
        ).run_uid
    entries = await client.audit(
        user=args.user, run=run_uid, window=_window(args, now_ms()), limit=args.limit
    )
    if args.output == "json":
        echo(json.dumps(query.to_builtins(entries)))
        return 0
    if not entries:
        echo("No audit entries found.")
        return 0
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
    return 0


def event_line(record: Recorded) -> str:
    event = record.event
    body = msgspec.to_builtins(event)
    hidden = (*_ENVELOPE, *SECRET_FIELDS.get(type(event), ()))
    rest = {k: v for k, v in body.items() if k not in hidden}
    moment_ = to_datetime(event.time)
    stamp = moment_.isoformat(timespec="milliseconds") if moment_ else "-"
    attempt = getattr(event, "attempt", "-")
    return (
        f"{record.position}  {stamp}  #{record.version}  {tag_of(type(event))}  "
        f"attempt={attempt}  actor={event.actor}  {json.dumps(rest, sort_keys=True)}"
    )


def event_json(record: Recorded) -> dict[str, Any]:
    """One event of ``events -o json``: where the log holds it (``RECORD_KEYS``), its type,
    then every field of the event, defaults included (``attempt`` 0 too). An event's own
    field named like a record key is shown under its own name (``_OWN_KEYS``); a secret's hash
    (``SECRET_FIELDS``) is not shown."""
    event = record.event
    fields = msgspec.to_builtins(msgspec.structs.asdict(event))
    for secret in SECRET_FIELDS.get(type(event), ()):
        del fields[secret]
    return {
        "position": record.position,
        "version": record.version,
        "type": tag_of(type(event)),
        **{_OWN_KEYS.get(name, name): value for name, value in fields.items()},
    }


async def run_events(args: argparse.Namespace, client: Client) -> int:
    _, records = await client.history(args.run, Action.EVENTS, all_users=args.all_users)
    if args.output == "json":
        echo(json.dumps([event_json(record) for record in records]))
        return 0
    for record in records:
        echo(event_line(record))
    return 0


def rebuild_projections(args: argparse.Namespace) -> int:
    """An operator's command: it works on the log itself (``RUNPLANE_REDIS_URL``, or the local
    stack's), as the projector does."""
    names = [args.name] if args.name else list(catalog.NAMES)
    settings = operator_settings()
    with make_console().status(f"Rebuilding {', '.join(names)} from the whole log..."):
        try:
            built = asyncio.run(rebuild_many(settings, names, now_ms=now_ms(), lanes=args.lanes))
        except LaneFailed as exc:
            again = " ".join(f"`mcli projections rebuild {name}`" for name in exc.names)
            raise ClientError(f"{exc}; readers still read their old builds; run {again}") from None
    for name in names:
        success(f"Rebuilt projection {name} (build {built[name]}); readers switched to it")
    return 0
