"""``mcli util [CLUSTERS]``: GPUs per instance type, active and queued runs, per cluster."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from cli.client import Client
from cli.commands.common import echo, with_client
from cli.render import make_console, utilization
from cli.sdk.clusters import fetch_clusters


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("util", help="cluster utilization")
    parser.add_argument("clusters", nargs="*", metavar="CLUSTER", help="only these clusters")
    parser.add_argument("--hide-users", action="store_true", help="only the instances")
    parser.set_defaults(handler=with_client(util))


async def util(args: argparse.Namespace, client: Client) -> int:
    clusters = await fetch_clusters(client, list(args.clusters) or None)
    if not clusters:
        echo("No clusters found: start a local stack with `mcli dev up`.")
        return 0
    now = datetime.now(tz=UTC)
    make_console().print(utilization(clusters, now, hide_users=args.hide_users))
    return 0
