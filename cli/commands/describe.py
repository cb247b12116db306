"""``mcli describe run [RUN]``: details (its parent run among them), compute, metadata, child
runs, nodes, every resumption's event log and the submitted YAML; the newest run when none is
named. Read from the run's own history, so it is current right after ``mcli run``; its children
from the projector's listing."""

from __future__ import annotations

import argparse
from typing import Any

from cli.client import Client
from cli.commands.common import add_all_users, with_client
from cli.reads import children_of, named_or_latest
from cli.render import describe, make_console
from events.access import Action


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("describe", help="describe an object (run)")
    kinds = parser.add_subparsers(dest="kind", metavar="{run}", required=True)
    run = kinds.add_parser("run", help="describe a run")
    run.add_argument("run", nargs="?", metavar="RUN", help="the run (default: your newest)")
    add_all_users(run)
    run.set_defaults(handler=with_client(describe_run))


async def describe_run(args: argparse.Namespace, client: Client) -> int:
    run = await named_or_latest(client, args.run, Action.DESCRIBE, all_users=args.all_users)
    run.children = await children_of(client, run)
    make_console().print(describe(run))
    return 0
