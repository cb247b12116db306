"""What the command modules share: output helpers, argument types, run filters, prompts.

Messages follow mcli: success ``✔ ...`` on stdout, warnings ``⚠ ...`` and errors
``✗ Error <code>: ...`` on stderr. Argument types raise ``argparse.ArgumentTypeError``, so a
bad value is a usage error (exit 2) that names the flag.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

from cli.api import Api, find_api
from cli.client import Client
from cli.criteria import moment_ms, status_set
from cli.reads import RunFilters
from events.status import RunStatus

Handler = Callable[[argparse.Namespace], int]
AsyncHandler = Callable[[argparse.Namespace, Client], Awaitable[int]]


def echo(text: str = "", *, end: str = "\n", err: bool = False, flush: bool = False) -> None:
    """Write ``text`` to stdout (stderr with ``err``): the commands' ``print``."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + end)
    if flush:
        stream.flush()


def success(message: str) -> None:
    echo(f"✔ {message}")


def warn(message: str) -> None:
    echo(f"⚠ {message}", err=True)


def error(code: int, message: str) -> None:
    first, *rest = message.splitlines() or [""]
    echo(f"✗ Error {code}: {first}", err=True)
    for line in rest:
        echo(f"  {line}", err=True)


def with_api(handler: Callable[[argparse.Namespace, Api], Coroutine[Any, Any, int]]) -> Handler:
    """A command handler that talks to the API server (``cli.api.find_api``)."""

    def run(args: argparse.Namespace) -> int:
        return asyncio.run(handler(args, find_api()))

    return run


def with_client(handler: AsyncHandler) -> Handler:
    """A command handler that gets a connected client (the log is pinged first, so an
    unreachable server is one clear line, not a traceback later)."""

    def run(args: argparse.Namespace) -> int:
        async def main() -> int:
            client = Client.discover()
            try:
                await client.ping()
                return await handler(args, client)
            finally:
                await client.close()

        return asyncio.run(main())

    return run


# --- argument types ----------------------------------------------------------------------------


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def non_negative(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive(text: str) -> int:
    """A count of at least 1 (``--limit``, ``--nodes``): 0 and -1 are the same usage error."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of hours, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of hours, got {text}")
    return value


def moment(text: str, now: datetime | None = None) -> int:
    """A time as ms since the epoch (``cli.criteria.moment_ms``: a date or a time ago)."""
    try:
        return moment_ms(text, now)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def statuses(text: str) -> frozenset[RunStatus]:
    """A comma list of statuses, case-insensitive (``cli.criteria.status_set``)."""
    try:
        return status_set(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- run filters (get runs, stop, delete) ------------------------------------------------------


def add_filters(parser: argparse.ArgumentParser, *, listing: bool = True) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run names or globs (hello-*)")
    parser.add_argument("-c", "--cluster", help="only runs on this cluster")
    parser.add_argument("--before", type=moment, help="only runs created before (date or 2h)")
    parser.add_argument("--after", type=moment, help="only runs created after (date or 2h)")
    parser.add_argument("-t", "--gpu-type", dest="gpu_type", help="only runs on this GPU type")
    parser.add_argument(
        "-n", "--gpu-num", dest="gpu_num", type=non_negative, help="only runs with this many GPUs"
    )
    parser.add_argument(
        "-s", "--status", type=statuses, help="only runs in these statuses (comma list)"
    )
    parser.add_argument("-u", "--user", help="only runs of this user")
    parser.add_argument("--all-users", action="store_true", help="runs of every user")
    if listing:
        parser.add_argument("--include-deleted", action="store_true", help="deleted runs too")


def add_all_users(parser: argparse.ArgumentParser) -> None:
    """``--all-users`` on a command that names one run: it may be another user's."""
    parser.add_argument(
        "--all-users", action="store_true", help="the run may be another user's (admins)"
    )


def filters_from(args: argparse.Namespace, *, limit: int | None = None) -> RunFilters:
    return RunFilters(
        names=tuple(args.runs),
        cluster=args.cluster,
        before=args.before,
        after=args.after,
        gpu_type=args.gpu_type,
        gpu_num=args.gpu_num,
        statuses=args.status,
        user=args.user,
        all_users=args.all_users,
        include_deleted=getattr(args, "include_deleted", False),
        limit=limit,
    )


def confirm(question: str) -> bool:
    """Ask on the terminal; no answer (EOF) is no."""
    try:
        answer = input(f"{question} [y/N]: ")
    except EOFError:
        echo(err=True)
        return False
    return answer.strip().lower() in ("y", "yes")
