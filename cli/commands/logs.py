"""``mcli logs [RUN]``: a rank's output of a resumption, read or followed.

``--rank/--node`` and ``--failed`` are mutually exclusive (a usage error, exit 2), as are
``--resumption`` and ``--prev``. A run that has no output says why (not scheduled yet; image
pull failure) on stderr and exits 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.client import Client
from cli.commands.common import add_all_users, echo, non_negative, warn, with_client
from cli.logsel import NoLogs, attempt_of, choose, follow, read, unscheduled_notice, wait_scheduled
from cli.reads import named_or_latest
from events.access import Action


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("logs", help="show a run's logs")
    parser.add_argument("run", nargs="?", metavar="RUN", help="the run (default: your newest)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--resumption", type=non_negative, help="this resumption (from 0)")
    which.add_argument("--prev", action="store_true", help="the resumption before the latest")
    rank = parser.add_mutually_exclusive_group()
    rank.add_argument("--rank", "--node", dest="rank", type=non_negative, help="this node rank")
    rank.add_argument("--failed", action="store_true", help="the first failed rank")
    parser.add_argument("-f", "--follow", action="store_true", help="follow until it ends")
    parser.add_argument("-t", "--tail", type=non_negative, help="only the last N lines")
    add_all_users(parser)
    parser.set_defaults(handler=with_client(logs))


async def logs(args: argparse.Namespace, client: Client) -> int:
    run = await named_or_latest(client, args.run, Action.LOGS, all_users=args.all_users)
    if args.follow:
        attempt = attempt_of(run, args.resumption, args.prev)
        notice = unscheduled_notice(run, attempt)
        if notice is not None and not run.resumptions[attempt].status.is_terminal():
            warn(notice)
            run = await wait_scheduled(client, run, attempt)
    try:
        target = choose(
            run,
            rank=args.rank,
            failed=args.failed,
            resumption=args.resumption,
            prev=args.prev,
        )
    except NoLogs as notice:
        warn(str(notice))
        return 0
    if args.follow:
        async for line in follow(client, target, args.tail):
            echo(line, end="", flush=True)
    else:
        echo("".join(await read(client, target, args.tail)), end="")
    return 0
