"""``mcli dev up | status | env | down``: the local stack (``cli.stack.LocalStack``) under the
state directory (``$RUNPLANE_HOME``, default ``~/.local/state/runplane``).

``up`` starts the stack's supervisor (``cli.supervisor``), which starts Valkey, every service
and the API server and starts again any that dies, with backoff. On the first ``up`` of a state
directory the user who runs it becomes the stack's admin, with an API key kept in the state
directory (``cli.stackkey``). ``up`` returns once every node registered (as the projector's
utilization model shows, so the projector answers too), the scheduler and the log-collector
hold their leases, the API server answers, and no process exited meanwhile. On a running stack,
``up`` starts the supervisor again if it died, and at once whatever is down (a process held by
``LocalStack.kill``, or one waiting out its backoff), and waits until each node among them has
registered again; with nothing down it says the stack is running already.

With ``--shards N`` (and ``--replicas R``) the log is on a local Valkey Cluster of N primaries
with R replicas each (``services.core.valkey_cluster``) in place of one server; ``status``
then lists each node: its address, role, shard, slots and keys. A later ``up`` of the same
state directory starts the same cluster again (its data, its nodes' ports) if given the same
shape; the default, one server, keeps its own data apart.

``env`` prints the two ``export`` lines that point MosaicML's client at the stack's API as its
admin: the one command that shows the key.

``down`` first stops every run that is not finished (a running one gets SIGTERM and the grace
period, as ``mcli stop run`` does) and waits for them to end, so that no rank outlives the
stack; a rank still running after that is killed (its run shows it lost at the next ``up``).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import time
from typing import Any

from redis.exceptions import RedisError

from cli.api import Api
from cli.client import Client
from cli.commands.common import echo, error, non_negative, positive, success, warn
from cli.errors import Refused
from cli.models import Run, now_ms
from cli.reads import RunFilters, fetch_run, list_runs
from cli.render import make_console, plain_table
from cli.stack import (
    LocalStack,
    StackConfig,
    current_user,
    kept_partitions,
    state_dir,
)
from cli.stackfiles import SUPERVISOR, Record
from cli.stackkey import ensure_admin, key_path, read_key
from cli.stackready import (
    POLL_S,
    operator_store,
    registrations_before,
    until_running,
    wait_ready,
)
from events import commands, keys
from events.model import NodeRegistered
from events.status import RunStatus
from services.core.valkey_cluster import ranges_text

_END_SLACK_S = 30.0
_UNFINISHED = frozenset(s for s in RunStatus if s.is_waiting() or s.is_active())
_WHY = "the local stack was shut down (mcli dev down)"
_NO_STACK = "no local stack: start one with mcli dev up"
_STATES = {
    "running": "Running",
    "starting": "Starting",
    "restarting": "Restarting",
    "held": "Stopped",
}


def register(subparsers: Any) -> None:
    dev = subparsers.add_parser(
        "dev",
        help="the local stack",
        description="A local stack: Valkey, every service, the API server and N simulated "
        "nodes, kept running by a supervisor, under $RUNPLANE_HOME.",
    )
    actions = dev.add_subparsers(dest="action", metavar="{up,status,env,down}", required=True)
    up = actions.add_parser(
        "up",
        help="start the stack (Valkey, every service, the API server, N simulated nodes), "
        "supervised: a process that dies is started again",
    )
    up.add_argument("--nodes", type=positive, default=2, help="nodes (default 2)")
    up.add_argument(
        "--gpus-per-node", dest="gpus_per_node", type=positive, default=8, help="default 8"
    )
    up.add_argument("--gpu-type", dest="gpu_type", default="a100_80gb", help="GPU type")
    up.add_argument("--cluster", default="local", help="the cluster's name (default local)")
    up.add_argument(
        "--executor",
        choices=("process", "container"),
        default="process",
        help="how nodes run ranks: local processes (default), or a podman container per rank "
        "(the engine's settings from this environment, e.g. CONTAINERS_CONF: docs/containers.md)",
    )
    up.add_argument(
        "--grace-period",
        dest="grace_period",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when a run is stopped",
    )
    up.add_argument(
        "--shards",
        type=positive,
        default=None,
        help="the log on a local Valkey Cluster of this many primaries (default: one server, "
        "no cluster; --replicas alone: one shard)",
    )
    up.add_argument(
        "--replicas",
        type=non_negative,
        default=None,
        help="each primary's replicas, on a cluster (default 0); 1 or more: a primary that "
        "dies is failed over (with 3 shards or more)",
    )
    up.add_argument(
        "--partitions",
        type=_partitions,
        default=None,
        help="the log's partitions (default 1, or the kept log's): on a cluster, the shards "
        "share the log only with several; fixed once the log exists (docs/scale.md)",
    )
    up.set_defaults(handler=dev_up)
    actions.add_parser(
        "status", help="the stack's processes: pid, status, restarts, last exit"
    ).set_defaults(handler=dev_status)
    actions.add_parser(
        "env",
        help="the API's endpoint and your admin key, as export lines: "
        'eval "$(mcli dev env)" points mosaicml-cli at the stack',
    ).set_defaults(handler=dev_env)
    actions.add_parser(
        "down", help="stop the unfinished runs, then the supervisor and every process"
    ).set_defaults(handler=dev_down)


def _partitions(text: str) -> int:
    value = positive(text)
    if value > keys.MAX_PARTITIONS:
        raise argparse.ArgumentTypeError(f"must be at most {keys.MAX_PARTITIONS}, got {value}")
    return value


def dev_up(args: argparse.Namespace) -> int:
    home = state_dir()
    shards = args.shards if args.shards is not None or args.replicas is None else 1
    replicas = args.replicas or 0
    running = LocalStack.find(home)
    if running is not None:
        if shards is not None and (running.config.shards, running.config.replicas) != (
            shards,
            replicas,
        ):
            shape = _shape(running.config)
            error(
                409,
                f"the local stack in {home} runs {shape}: `mcli dev down` first to start another",
            )
            return 1
        return _start_missing(running)
    stack = LocalStack(home)
    config = StackConfig(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        gpu_type=args.gpu_type,
        cluster=args.cluster,
        grace_period_s=args.grace_period,
        executor=args.executor,
        shards=shards,
        replicas=replicas,
        partitions=args.partitions or kept_partitions(home) or 1,
    )
    console = make_console()
    with console.status("Starting the local stack...") as spinner:
        try:
            stack.up(config)
            asyncio.run(_admin(stack))
            spinner.update(f"Waiting for {args.nodes} nodes to register...")
            asyncio.run(wait_ready(stack, config))
        except BaseException:
            stack.down()
            raise
    ranks = " (ranks in podman containers)" if args.executor == "container" else ""
    success(
        f"Local stack up: {args.nodes} nodes x {args.gpus_per_node} {args.gpu_type} GPUs on "
        f"cluster {args.cluster}{ranks}, log at {stack.url} ({_shape(config)}), state in {home}"
    )
    _api_line(stack)
    _say_isolation(stack)
    echo("\nSubmit a run with:\n\nmcli run -f examples/hello.yaml")
    return 0


def _shape(config: StackConfig) -> str:
    parts = "" if config.partitions == 1 else f", {config.partitions} partitions"
    if config.shards is None:
        return f"one server{parts}"
    shards = f"{config.shards} shard{'s' if config.shards != 1 else ''}"
    replicas = f"{config.replicas} replica{'s' if config.replicas != 1 else ''}"
    return f"a Valkey Cluster of {shards} with {replicas} each{parts}"


def _api_line(stack: LocalStack) -> None:
    echo(
        f"API: {stack.api_url} (as admin {current_user()}: "
        '`eval "$(mcli dev env)"` points mosaicml-cli at it)'
    )
    echo(f"console: {stack.console_url} (sign in with an API key: `mcli dev env` shows yours)")


async def _admin(stack: LocalStack) -> None:
    """The user who runs ``up`` is the stack's admin, with a key (``cli.stackkey``)."""
    store = operator_store(stack)
    try:
        await ensure_admin(store, stack.state_dir, current_user(), now_ms())
    finally:
        await store.close()


def _start_missing(stack: LocalStack) -> int:
    missing = stack.missing()
    seen = asyncio.run(registrations_before(stack, missing))
    revived = stack.supervise()
    if revived:
        success("Started the stack's supervisor again (it had stopped running)")
    elif not missing:
        asyncio.run(_admin(stack))
        warn(
            f"A local stack is already running in {stack.state_dir} ({stack.url}): "
            "`mcli dev status`"
        )
        _api_line(stack)
        return 0
    names = ", ".join(missing)
    with make_console().status(f"Starting {names or 'the stack'} again..."):
        asyncio.run(_restart(stack, seen))
    if missing:
        success(f"Started {names} again (it had stopped running); local stack up at {stack.url}")
    else:
        success(f"Local stack up at {stack.url}")
    _api_line(stack)
    return 0


async def _restart(stack: LocalStack, seen: dict[str, int]) -> None:
    """Have the supervisor start at once whatever is down, and wait until the stack is ready
    and each node of ``seen`` has registered once more."""
    stack.start_down()
    await until_running(stack)
    await _admin(stack)
    await wait_ready(stack, stack.config, registered_again=seen)


def dev_status(args: argparse.Namespace) -> int:
    home = state_dir()
    stack = LocalStack.find(home)
    if stack is None:
        echo(f"No local stack is running in {home}: start one with `mcli dev up`.")
        return 1
    config = stack.config
    on = "" if config.shards is None else f" ({_shape(config)})"
    echo(
        f"Local stack in {home}: log at {stack.url}{on}, API at {stack.api_url}; cluster "
        f"{config.cluster}, {config.nodes} nodes x {config.gpus_per_node} {config.gpu_type} GPUs"
    )
    supervisor = stack.supervisor()
    table = plain_table("SERVICE", "PID", "STATUS", "RESTARTS", "LAST EXIT")
    if supervisor is None:
        table.add_row(SUPERVISOR, "-", "Stopped", "-", "-")
    else:
        table.add_row(SUPERVISOR, str(supervisor.pid), "Running", "-", "-")
    records = stack.records()
    for name in (*stack.servers, *stack.services):
        record = records.get(name, Record())
        process = record.running()
        if process is not None:
            status = "Running"
        elif record.state == "running":
            status = "Stopped"  # it ended while no supervisor watched it
        else:
            status = _STATES[record.state]
        table.add_row(
            name,
            "-" if process is None else str(process.pid),
            status,
            str(record.restarts),
            record.last_exit or "-",
        )
    make_console().print(table)
    _cluster_table(stack)
    echo(f"console: {stack.console_url}")
    for name in stack.services:
        if (url := stack.metrics_url(name)) is not None:
            echo(f"metrics: {name} at {url}")
    _say_isolation(stack)
    if supervisor is None:
        warn("The stack's supervisor is not running: `mcli dev up` starts it again")
    return 0


def _cluster_table(stack: LocalStack) -> None:
    """On a cluster, each node: its address, role, shard, the shard's slots and its keys."""
    cluster = stack.valkey_cluster()
    if cluster is None:
        return
    table = plain_table("NODE", "ADDRESS", "ROLE", "SHARD", "SLOTS", "KEYS")
    for node in cluster.status():
        table.add_row(
            stack.servers[node.index],
            node.address,
            node.role,
            "-" if node.shard is None else str(node.shard),
            ranges_text(node.slots),
            "-" if node.keys is None else str(node.keys),
        )
    make_console().print(table)


def _say_isolation(stack: LocalStack) -> None:
    """``isolation: ...`` as the nodes registered it; a warning where runs share the stack's
    user (``services.node_agent.isolation``)."""
    for line in asyncio.run(_isolation(stack)):
        (warn if line.startswith("none") else echo)(f"isolation: {line}")


async def _isolation(stack: LocalStack) -> list[str]:
    """How the nodes keep runs apart, as their last registrations say (each way once);
    nothing while the log cannot be read."""
    nodes = [node for name in stack.services if (node := stack.node_of(name)) is not None]
    store = operator_store(stack)
    found: dict[str, None] = {}
    try:
        for node in nodes:
            said = [r.event for r in await store.history(f"node:{node}")]
            registered = [e for e in said if isinstance(e, NodeRegistered) and e.isolation]
            if registered:
                found[registered[-1].isolation] = None
    except (RedisError, OSError):
        return []
    finally:
        await store.close()
    return list(found)


def dev_env(args: argparse.Namespace) -> int:
    home = state_dir()
    stack = LocalStack.find(home)
    if stack is None:
        error(503, _NO_STACK)
        return 1
    key = read_key(home)
    if key is None:
        error(404, f"no API key in {key_path(home)}: `mcli dev up` issues one")
        return 1
    echo(f"export MOSAICML_API_ENDPOINT={shlex.quote(stack.api_url)}")
    echo(f"export MOSAICML_API_KEY={shlex.quote(key)}")
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
    client = Client(Api(stack.api_url, read_key(stack.state_dir) or ""))
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
                await asyncio.sleep(POLL_S)
        return stopped, going
    finally:
        await client.close()
