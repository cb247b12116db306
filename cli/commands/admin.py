"""runplane's own commands beyond mcli: ``billing``, ``audit``, ``events RUN`` and
``projections rebuild``.

Billing sums GPU-milliseconds from the billing read model, audit reads the audit read model;
both are asked for and shown as ``mcli admin report`` shows them over the archive
(``cli.commands.reportview``).
``events`` prints a run's own history, the ground truth every read model is folded from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import msgspec

from cli.client import Client
from cli.commands.common import add_all_users, echo, positive, success, with_client
from cli.commands.reportview import (
    add_audit,
    add_billing,
    prices,
    show_audit,
    show_billing,
    window_of,
)
from cli.errors import ClientError
from cli.models import now_ms, to_datetime
from cli.reads import named_run
from cli.render import make_console
from cli.stack import operator_settings
from events.access import Action
from events.codec import Recorded
from events.model import SECRET_FIELDS, tag_of
from projections import catalog
from projections.lanes import LaneFailed
from services.projector.lanes import rebuild_many

_ENVELOPE = ("type", "id", "actor", "time", "run_id", "attempt")
RECORD_KEYS = ("position", "version", "type")  # the log position, the run's version, the tag
_OWN_KEYS = {"position": "queue_position"}  # attempt.queued's place in its queue


def register(subparsers: Any) -> None:
    billing = subparsers.add_parser("billing", help="GPU-hours and cost, grouped")
    add_billing(billing)
    billing.set_defaults(handler=with_client(billing_report))

    audit = subparsers.add_parser("audit", help="who did what, and when")
    add_audit(audit)
    add_all_users(audit)
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


async def billing_report(args: argparse.Namespace, client: Client) -> int:
    now = now_ms()
    report, names = await client.billing(
        args.by, window=window_of(args, now), now=now, prices=prices() or None
    )
    show_billing(report, names, args.output)
    return 0


async def audit_trail(args: argparse.Namespace, client: Client) -> int:
    run_uid = None
    if args.run is not None:  # an unknown run is a 404, another user's needs --all-users
        run_uid = (
            await named_run(client, args.run, Action.AUDIT, all_users=args.all_users)
        ).run_uid
    entries = await client.audit(
        user=args.user, run=run_uid, window=window_of(args, now_ms()), limit=args.limit
    )
    show_audit(entries, args.output)
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
