"""``mcli run -f FILE | -r RUN | --clone RUN``: submit, restart or clone a run; ``--follow``
shows every resumption's status transitions as they happen (an end with its reason) and the
output of each resumption that ran, then exits 1 if the run ended FAILED or STOPPED (0 if it
COMPLETED), so scripts can tell.

Nothing is written unless the whole request is valid: the YAML and the overrides are
validated and checked against the cluster first (``cli.submit``).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cli.client import Client, ClientError
from cli.commands.common import (
    add_all_users,
    echo,
    non_negative,
    positive,
    success,
    warn,
    with_client,
)
from cli.commands.options import add_scheduling, scheduling_of, yaml_keys_help
from cli.logsel import NoLogs, choose, follow
from cli.models import Resumption, Run, RunLifecycle
from cli.reads import fetch_run, named_run
from cli.submit import submit_config, with_overrides
from events import commands
from events.access import Action
from events.config import load_file
from events.status import RunStatus

S = RunStatus
_POLL_S = 0.5


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="submit a run (-f FILE), restart one (-r RUN) or clone one (--clone RUN)",
        description="Submit a run (-f FILE), restart one (-r RUN) or clone one (--clone RUN).",
        epilog=yaml_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--file", help="the run's YAML")
    source.add_argument("-r", "--restart", metavar="RUN", help="restart a finished run")
    source.add_argument("--clone", metavar="RUN", help="submit a copy of a run")
    add_scheduling(parser, watchdog=False)
    parser.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="show the run's status live, then its logs; exit 1 if it ends Failed or Stopped",
    )
    parser.add_argument("--image", help="the image")
    parser.add_argument("--name", help="the run's base name")
    parser.add_argument("--cluster", help="the cluster")
    parser.add_argument("--gpu-type", "--gpu_type", dest="gpu_type", help="GPU type")
    parser.add_argument("--gpus", type=non_negative, help="GPUs over every node")
    parser.add_argument("--instance", help="instance type")
    parser.add_argument("--nodes", type=positive, help="nodes")
    add_all_users(parser)
    parser.set_defaults(handler=with_client(run_command))


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    scheduling = {f"scheduling.{k}": v for k, v in scheduling_of(args).items()}
    return {
        "image": args.image,
        "name": args.name,
        "compute.cluster": args.cluster,
        "compute.gpu_type": args.gpu_type,
        "compute.gpus": args.gpus,
        "compute.instance": args.instance,
        "compute.nodes": args.nodes,
        **scheduling,
    }


async def run_command(args: argparse.Namespace, client: Client) -> int:
    overrides = overrides_of(args)
    if args.restart:
        name = await restart(client, args.restart, overrides, all_users=args.all_users)
        success(f"Run {name} resubmitted.")
    else:
        if args.file:
            config, warnings = load_file(args.file)
            where = args.file
        else:
            source = await named_run(client, args.clone, Action.CLONE, all_users=args.all_users)
            config, warnings = source.submitted_config, []
            where = f"run {args.clone}"
        run, _, more = await submit_config(client, with_overrides(config, overrides), where=where)
        name = run.name
        for warning in warnings + more:
            warn(warning)
        success(f"Run {name} submitted.")
    if args.follow:
        return await follow_run(client, name)
    echo(
        f"\nTo see the run's status, use:\n\nmcli get runs\n\n"
        f"To see the run's logs, use:\n\nmcli logs {name}"
    )
    return 0


async def restart(client: Client, run: str, overrides: dict[str, Any], *, all_users: bool) -> str:
    """Restart ``run`` (another user's with ``all_users``); scheduling overrides are applied
    first, others cannot change."""
    fixed = [k for k, v in overrides.items() if v is not None and not k.startswith("scheduling.")]
    if fixed:
        names = ", ".join("--" + k.rpartition(".")[2].replace("_", "-") for k in fixed)
        raise ClientError(f"{names} cannot change on a restart: use --clone {run} instead")
    changes = {k.partition(".")[2]: v for k, v in overrides.items() if v is not None}
    found = await fetch_run(client, run, Action.RESTART, all_users=all_users)
    status = found.latest_resumption.status
    if not status.is_terminal():
        raise ClientError(
            f"Run {found.name} is {status.display_name}: stop it first "
            f"(`mcli stop run {found.name}`), then restart it"
        )
    if changes:
        update = commands.UpdateRun(actor=client.user, **changes)
        await client.request(run, update, all_users=all_users)
    await client.request(run, commands.RestartRun(actor=client.user), all_users=all_users)
    return found.name


async def follow_run(client: Client, name: str) -> int:
    """Every resumption's status transitions as they happen (an end with its reason), the
    output of each resumption that ran, then how the run ended: 1 if FAILED or STOPPED.

    The run is read from its own history, whose phases only grow; a resumption's phases are
    printed in order, before its output is followed and after. The run is over once its latest
    resumption is terminal: a retry is appended with the end it follows, never after it."""
    printed: dict[int, int] = {}  # resumption index -> phases printed
    followed: set[int] = set()  # resumptions whose output was shown
    while True:
        run = await fetch_run(client, name)
        for resumption in run.resumptions:
            index = resumption.index
            phases = [p for p in run.lifecycle if p.resumption_index == index]
            for phase in phases[printed.get(index, 0) :]:
                echo(transition(run, phase), flush=True)
            printed[index] = len(phases)
            if index not in followed and _ran(resumption):
                followed.add(index)
                await _output(client, run, index)
                break  # the run moved on meanwhile: read it again
        else:
            if run.latest_resumption.is_terminal:
                break
            await asyncio.sleep(_POLL_S)
    reason = f" ({run.reason})" if run.reason else ""
    if run.status is S.COMPLETED:
        success(f"Run {name} completed.")
        return 0
    echo(f"✗ Run {name} ended {run.status.display_name}{reason}", err=True)
    return 1


def transition(run: Run, phase: RunLifecycle) -> str:
    """``Run NAME (resumption N): Failed (Error (exit code 1))``."""
    why = f" ({phase.reason})" if phase.reason else ""
    return f"Run {run.name} (resumption {phase.resumption_index}): {phase.status.display_name}{why}"


def _ran(resumption: Resumption) -> bool:
    """Whether the resumption's command may have output: it got its GPUs and went on."""
    return resumption.started_at is not None and resumption.status.after(S.STARTING)


async def _output(client: Client, run: Run, index: int) -> None:
    try:
        target = choose(run, resumption=index)
    except NoLogs as notice:
        warn(str(notice))
        return
    async for line in follow(client, target):
        echo(line, end="", flush=True)
