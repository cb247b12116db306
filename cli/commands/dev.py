"""``mcli dev up | status | down``: the local stack (``cli.stack.LocalStack``) under the
state directory (``$RUNPLANE_HOME``, default ``~/.local/state/runplane``).

``up`` returns once every node registered (as the projector's utilization model shows, so
the projector answers too), the scheduler and the log-collector hold their leases, and every
process still runs; a second ``up`` says the stack is running already.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from cli.client import Client, state_dir
from cli.commands.common import echo, positive, success, warn
from cli.render import make_console, plain_table
from cli.stack import LocalStack, StackConfig, StackError
from events import keys
from projections import query

_READY_S = 90.0
_POLL_S = 0.2


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
        warn(f"A local stack is already running in {home} ({running.url}): `mcli dev status`")
        return 0
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


async def wait_ready(stack: LocalStack, config: StackConfig) -> None:
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
            if await ready(client, config):
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
    with make_console().status("Stopping the local stack..."):
        stack.down()
    success("Local stack stopped.")
    return 0
