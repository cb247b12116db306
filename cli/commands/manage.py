"""``mcli stop run(s)``, ``mcli delete run(s)`` and ``mcli update run``.

Stop and delete take RUN names or globs, the ``get runs`` filters, or ``-a/--all``; they ask
before acting unless ``-y/--force``. Stop skips finished runs with a warning. Every request is
decided on the run's own history (``events.commands``), so a run that changed in between is
refused cleanly, never half-stopped.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.client import Client
from cli.commands import secrets
from cli.commands.common import (
    add_all_users,
    add_filters,
    confirm,
    echo,
    error,
    filters_from,
    success,
    warn,
    with_client,
)
from cli.commands.options import add_scheduling, scheduling_of
from cli.errors import NotFound, Refused, UsageError
from cli.models import Run
from cli.reads import select_runs
from events import commands
from events.access import Action
from services.api.runs import deleted


def register(subparsers: Any) -> None:
    for verb, handler in (("stop", stop_runs), ("delete", delete_runs)):
        parser = subparsers.add_parser(
            verb, help=f"{verb} runs" + (", secrets" * (verb == "delete"))
        )
        shown = "{run,runs,secret}" if verb == "delete" else "{run,runs}"
        kinds = parser.add_subparsers(dest="kind", metavar=shown, required=True)
        if verb == "delete":
            secrets.add_delete(kinds)
        for kind in ("run", "runs"):
            sub = kinds.add_parser(kind, help=f"{verb} runs by name, glob or filter")
            add_filters(sub, listing=False)
            sub.add_argument("-a", "--all", action="store_true", help=f"{verb} every run of yours")
            sub.add_argument(
                "-y", "--force", action="store_true", help="do not ask for confirmation"
            )
            sub.set_defaults(handler=with_client(handler), include_deleted=False)
    update = subparsers.add_parser("update", help="update a run's scheduling")
    kinds = update.add_subparsers(dest="kind", metavar="{run}", required=True)
    run = kinds.add_parser(
        "run",
        help="update a run's scheduling fields",
        description="Update a run's scheduling fields (those given; the others stay).",
    )
    run.add_argument("run", metavar="RUN", help="the run's name")
    add_scheduling(run, watchdog=True)
    add_all_users(run)
    run.set_defaults(handler=with_client(update_run))


async def _select(args: argparse.Namespace, client: Client, action: Action) -> list[Run]:
    """The runs named or matched, each one this user may ``action`` and not deleted."""
    filters = filters_from(args)
    if not args.runs and not args.all and not filters.narrows:
        raise UsageError("name the runs (names or globs), give filters, or use --all")
    runs = await select_runs(client, list(args.runs), filters, every=args.all, action=action)
    if not runs:
        raise NotFound("No runs found matching the given names and filters")
    for run in runs:
        if run.is_deleted:
            raise Refused(deleted(run.name).message)
    return runs


def _ask(verb: str, runs: list[Run], force: bool) -> bool:
    if force:
        return True
    names = ", ".join(run.name for run in runs[:10]) + (", ..." if len(runs) > 10 else "")
    plural = "run" if len(runs) == 1 else f"{len(runs)} runs"
    return confirm(f"{verb} {plural}: {names}?")


async def _each(
    client: Client,
    runs: list[Run],
    command: commands.Command,
    done: str,
    *,
    all_users: bool,
) -> int:
    failed = 0
    for run in runs:
        try:
            await client.request(run.run_uid, command, all_users=all_users)
        except Refused as refused:
            error(refused.code, str(refused))
            failed += 1
            continue
        success(f"{done} run {run.name}")
    return 1 if failed else 0


async def stop_runs(args: argparse.Namespace, client: Client) -> int:
    runs = await _select(args, client, Action.STOP)
    active = []
    for run in runs:
        if run.status.is_terminal():
            warn(f"Run {run.name} is already {run.status.display_name}; skipping it")
        else:
            active.append(run)
    if not active:
        return 0
    if not _ask("Stop", active, args.force):
        echo("Cancelled: nothing was stopped.")
        return 1
    stop = commands.StopRun(actor=client.user)
    return await _each(client, active, stop, "Stopped", all_users=args.all_users)


async def delete_runs(args: argparse.Namespace, client: Client) -> int:
    runs = await _select(args, client, Action.DELETE)
    if not _ask("Delete", runs, args.force):
        echo("Cancelled: nothing was deleted.")
        return 1
    delete = commands.DeleteRun(actor=client.user)
    return await _each(client, runs, delete, "Deleted", all_users=args.all_users)


async def update_run(args: argparse.Namespace, client: Client) -> int:
    changes = scheduling_of(args)
    if all(value is None for value in changes.values()):
        raise UsageError(
            "nothing to update: give --priority, --preemptible, --max-retries, --max-duration "
            "or --retry-on-system-failure"
        )
    update = commands.UpdateRun(actor=client.user, **changes)
    name = await client.request(args.run, update, all_users=args.all_users)
    shown = ", ".join(f"{k}={v}" for k, v in changes.items() if v is not None)
    success(f"Updated run {name}: {shown}")
    return 0
