"""``mcli dev up | status | down``: the local stack (``cli.stack.LocalStack``) under the
state directory (``$RUNPLANE_HOME``, default ``~/.local/state/runplane``).

``up`` returns once every node registered (as the projector's utilization model shows, so
the projector answers too), the scheduler and the log-collector hold their leases, and every
process still runs. On a running stack, ``up`` starts again what died (a node-agent, a service)
and waits until each node it started has registered again; with nothing missing it says the
stack is running already.

``down`` first stops every run that is not finished (a running one gets SIGTERM and the grace
period, as ``mcli stop run`` does) and waits for them to end, so that no rank outlives the
stack; a rank still running after that is killed (its run shows it lost at the next ``up``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from cli.client import Client, Refused, state_dir
from cli.commands.common import echo, positive, success, warn
from cli.models import Run
from cli.reads import RunFilters, fetch_run, list_runs
from cli.render import make_console, plain_table
from cli.stack import LocalStack, StackConfig, StackError
from events import commands, keys
from events.model import NodeRegistered
from events.status import RunStatus
from projections import query

_READY_S = 90.0
_POLL_S = 0.2
_END_SLACK_S = 30.0
_UNFINISHED = frozenset(s for s in RunStatus if s.is_waiting() or s.is_active())
_WHY = "the local stack was shut down (mcli dev down)"


def register(subparsers: Any) -> None:
    dev = subparsers.add_parser("dev", help="the local stack")
    actions = dev.add_subparsers(dest="action", metavar="{up,status,down}", required=True)
    up = actions.add_parser("up", help="start Valkey, every service and N simulated nodes")
    up.add_argument("--nodes", type=positive, default=2, help="nodes (default 2)")
    up.add_argument(
        "--gpus-per-node", dest="gpus_per_node", type=positive, default=8, help="default 8"
    )
    up.add_argument("--gpu-type", dest="gpu_type", default="a100_80gb", help="GPU type")
    up.add_argument("--cluster", default="local", help="the cluster's name (default local)")
    up.add_argument(
        "--grace-period",
        dest="grace_period",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when a run is stopped",
    )
    up.set_defaults(handler=dev_up)
    actions.add_parser("status", help="the local stack's processes").set_defaults(
        handler=dev_status
    )
    actions.add_parser("down", help="stop the local stack").set_defaults(handler=dev_down)


def dev_up(args: argparse.Namespace) -> int:
    home = state_dir()
    running = LocalStack.find(home)
    if running is not None:
        return _start_missing(running)
    stack = LocalStack(home)
    config = StackConfig(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        gpu_type=args.gpu_type,
        cluster=args.cluster,
        grace_period_s=args.grace_period,
    )
    console = make_console()
    with console.status("Starting the local stack...") as spinner:
        stack.up(config)
        spinner.update(f"Waiting for {args.nodes} nodes to register...")
        try:
            asyncio.run(wait_ready(stack, config))
        except BaseException:
            stack.down()
            raise
    success(
        f"Local stack up: {args.nodes} nodes x {args.gpus_per_node} {args.gpu_type} GPUs on "
        f"cluster {args.cluster}, log at {stack.url}, state in {home}"
    )
    echo("\nSubmit a run with:\n\nmcli run -f examples/hello.yaml")
    return 0


def _start_missing(stack: LocalStack) -> int:
    missing = stack.missing()
    if not missing:
        warn(
            f"A local stack is already running in {stack.state_dir} ({stack.url}): "
            "`mcli dev status`"
        )
        return 0
    names = ", ".join(missing)
    with make_console().status(f"Starting {names} again..."):
        asyncio.run(_restart(stack, missing))
    success(f"Started {names} again (it had stopped running); local stack up at {stack.url}")
    return 0


async def _restart(stack: LocalStack, names: list[str]) -> None:
    """Start ``names`` again and wait until the stack is ready and each node among them has
    registered once more."""
    client = Client(stack.url, stack.state_dir)
    try:
        nodes = [node for name in names if (node := stack.node_of(name)) is not None]
        seen = {node: await _registrations(client, node) for node in nodes}
        for name in names:
            stack.start(name)
        await wait_ready(stack, stack.config, registered_again=seen)
    finally:
        await client.close()


async def _registered(client: Client, seen: dict[str, int]) -> bool:
    """Each node of ``seen`` registered more often than ``seen`` says."""
    for node, count in seen.items():
        if await _registrations(client, node) <= count:
            return False
    return True


async def _registrations(client: Client, node: str) -> int:
    return sum(
        isinstance(r.event, NodeRegistered) for r in await client.store.history(f"node:{node}")
    )


async def wait_ready(
    stack: LocalStack, config: StackConfig, *, registered_again: dict[str, int] | None = None
) -> None:
    """Until the stack is ready (see the module), and each node of ``registered_again`` has
    registered more often than the count given."""
    client = Client(stack.url, stack.state_dir)
    deadline = time.monotonic() + _READY_S
    try:
        while True:
            dead = [name for name, pid in stack.status().items() if pid is None]
            if dead:
                tail = stack.log_of(dead[0]).read_text(errors="replace").splitlines()[-5:]
                raise StackError(
                    f"{', '.join(dead)} exited while starting; its log ends with:\n"
                    + "\n".join(tail)
                )
            if await ready(client, config) and await _registered(client, registered_again or {}):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"the stack was not ready within {_READY_S:g}s: see the logs in "
                    f"{stack.state_dir / 'logs'}"
                )
            await asyncio.sleep(_POLL_S)
    finally:
        await client.close()


async def ready(client: Client, config: StackConfig) -> bool:
    leases = await client.redis.exists(keys.scheduler_lease(), keys.log_collector_lease())
    if leases != 2:
        return False
    clusters = await query.utilization(client.redis, [config.cluster])
    nodes = sum(i.nodes for c in clusters for i in c.instances)
    return nodes >= config.nodes


def dev_status(args: argparse.Namespace) -> int:
    home = state_dir()
    stack = LocalStack.find(home)
    if stack is None:
        echo(f"No local stack is running in {home}: start one with `mcli dev up`.")
        return 1
    config = stack.config
    echo(
        f"Local stack in {home}: log at {stack.url}; cluster {config.cluster}, "
        f"{config.nodes} nodes x {config.gpus_per_node} {config.gpu_type} GPUs"
    )
    table = plain_table("SERVICE", "PID", "STATUS")
    table.add_row("valkey", str(stack.server.pid or "-"), "Running")
    for name, pid in stack.status().items():
        table.add_row(name, str(pid or "-"), "Running" if pid else "Stopped")
    make_console().print(table)
    return 0


def dev_down(args: argparse.Namespace) -> int:
    home = state_dir()
    stack = LocalStack.find(home)
    if stack is None:
        echo(f"No local stack is running in {home}.")
        return 0
    console = make_console()
    with console.status("Stopping the runs that are not finished..."):
        stopped, going = asyncio.run(stop_runs(stack))
    for run in stopped:
        success(f"Stopped run {run.name} (it was {run.status.display_name}): the stack goes down")
    for run in going:
        warn(f"Run {run.name} did not end within {_end_wait_s(stack):g}s; its ranks are killed")
    with console.status("Stopping the local stack..."):
        killed = stack.down()
    for key in killed:
        warn(
            f"Killed rank {key.rank} of attempt {key.attempt} of run {key.run_id}, still "
            "running: the next `mcli dev up` records it as lost"
        )
    success("Local stack stopped.")
    return 0


def _end_wait_s(stack: LocalStack) -> float:
    """How long a stopped run may take to end: the grace period, then the slack of the
    reports (rank exits, the scheduler's ending)."""
    return stack.config.grace_period_s + _END_SLACK_S


async def stop_runs(stack: LocalStack) -> tuple[list[Run], list[Run]]:
    """Stop every run that is not finished, of every user, and wait until each has ended;
    the runs asked to stop (as they were), and those that had not ended in time."""
    client = Client(stack.url, stack.state_dir)
    try:
        filters = RunFilters(all_users=True, statuses=_UNFINISHED, limit=None)
        unfinished = await list_runs(client, filters)
        stopped: list[Run] = []
        for run in unfinished:
            stop = commands.StopRun(actor=client.user, reason=_WHY)
            try:
                await client.request(run.run_uid, stop, all_users=True)
            except Refused:
                continue  # ended, or ending already (it is waited for below all the same)
            stopped.append(run)
        deadline = time.monotonic() + _end_wait_s(stack)
        going = list(unfinished)
        while going and time.monotonic() < deadline:
            going = [
                r for r in going if not (await fetch_run(client, r.run_uid)).status.is_terminal()
            ]
            if going:
                await asyncio.sleep(_POLL_S)
        return stopped, going
    finally:
        await client.close()
