"""``mcli get runs``: runs newest first, one row per resumption, filtered; ``-m KEY`` adds a
column of a metadata key (repeatable, as in mcli); ``-o`` table, name or json (the run
objects, ``Run.to_dict()``: the SDK's ``Run``, its metadata whole)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cli.client import Client
from cli.commands import secrets
from cli.commands.common import add_filters, echo, filters_from, positive, with_client
from cli.reads import list_runs
from cli.render import make_console, runs_table


def register(subparsers: Any) -> None:
    get = subparsers.add_parser("get", help="list objects (runs, secrets)")
    kinds = get.add_subparsers(dest="kind", metavar="{runs,secrets}", required=True)
    secrets.add_get(kinds)
    for alias in ("runs", "run"):
        parser = kinds.add_parser(alias, help="list runs" if alias == "runs" else argparse.SUPPRESS)
        add_filters(parser)
        parser.add_argument("-l", "--latest", action="store_true", help="only the newest run")
        parser.add_argument("--limit", type=positive, default=50, help="at most this many runs")
        parser.add_argument(
            "--expanded", action="store_true", help="every resumption, not only the 3 newest"
        )
        parser.add_argument("--ids", action="store_true", help="show run ids")
        parser.add_argument(
            "-m",
            "--metadata",
            action="append",
            default=[],
            metavar="KEY",
            help="a column of this metadata key (repeat for more)",
        )
        parser.add_argument(
            "-o", "--output", choices=("table", "name", "json"), default="table", help="format"
        )
        parser.set_defaults(handler=with_client(get_runs))


async def get_runs(args: argparse.Namespace, client: Client) -> int:
    limit = 1 if args.latest else args.limit
    runs = await list_runs(client, filters_from(args, limit=limit))
    users = args.all_users or args.user is not None
    if args.output == "name":
        for run in runs:
            echo(run.name)
    elif args.output == "json":
        echo(json.dumps([run.to_dict() for run in runs]))
    elif not runs:
        echo("No runs found.")
    else:
        table = runs_table(
            runs, users=users, ids=args.ids, expanded=args.expanded, metadata=args.metadata
        )
        make_console().print(table)
    return 0
