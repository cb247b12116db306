"""``mcli admin nodes ...``: take a node out of placement and back, through the API (admins
only; the server decides and records a refusal for the audit).

- ``cordon NODE --reason TEXT``: no new placements; what runs there runs on.
- ``drain NODE --reason TEXT [--deadline 1h]``: no new placements; what still runs at the
  deadline is stopped by the scheduler with a system reason naming the drain (and retried
  with ``retry_on_system_failure``); without a deadline it ends by itself.
- ``uncordon NODE``: placements again.
- ``list``: every node, its state, reason, who and since (Slurm's ``sinfo -R``).
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.api import Api
from cli.commands.common import echo, with_api
from cli.criteria import duration_s
from cli.models import to_datetime
from cli.render import DASH, make_console, plain_table, when

_SHOWN = "name cluster service reason by since deadline"
CORDON = f"""
mutation Cordon($node: String!, $reason: String!) {{
  cordonNode(node: $node, reason: $reason) {{ {_SHOWN} }}
}}"""
DRAIN = f"""
mutation Drain($node: String!, $reason: String!, $deadlineSeconds: Float) {{
  drainNode(node: $node, reason: $reason, deadlineSeconds: $deadlineSeconds) {{ {_SHOWN} }}
}}"""
UNCORDON = f"""
mutation Uncordon($node: String!) {{ uncordonNode(node: $node) {{ {_SHOWN} }} }}"""
NODES = "query Nodes { nodes }"


def _span(text: str) -> float:
    try:
        return duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(kinds: Any) -> None:
    """``nodes`` under ``mcli admin``."""
    nodes = kinds.add_parser("nodes", help="cordon, drain, uncordon and list nodes")
    actions = nodes.add_subparsers(dest="action", metavar="ACTION", required=True)
    cordon = actions.add_parser("cordon", help="no new placements on NODE")
    cordon.add_argument("node", metavar="NODE")
    cordon.add_argument("--reason", required=True, help="why (shown in nodes list and audit)")
    cordon.set_defaults(handler=with_api(cordon_node))
    drain = actions.add_parser(
        "drain", help="no new placements on NODE; what runs there is stopped at the deadline"
    )
    drain.add_argument("node", metavar="NODE")
    drain.add_argument("--reason", required=True, help="why (shown in nodes list and audit)")
    drain.add_argument(
        "--deadline",
        type=_span,
        metavar="SPAN",
        help="stop what still runs after this long (30m, 1h); default: let it end by itself",
    )
    drain.set_defaults(handler=with_api(drain_node))
    uncordon = actions.add_parser("uncordon", help="placements on NODE again")
    uncordon.add_argument("node", metavar="NODE")
    uncordon.set_defaults(handler=with_api(uncordon_node))
    listed = actions.add_parser("list", help="every node: state, reason, who, since")
    listed.set_defaults(handler=with_api(list_nodes))


async def cordon_node(args: argparse.Namespace, api: Api) -> int:
    await api.call(CORDON, {"node": args.node, "reason": args.reason})
    echo(f"✔ Cordoned node {args.node}: no new placements ({args.reason})")
    return 0


async def drain_node(args: argparse.Namespace, api: Api) -> int:
    variables = {"node": args.node, "reason": args.reason, "deadlineSeconds": args.deadline}
    shown = (await api.call(DRAIN, variables))["drainNode"]
    deadline = to_datetime(shown["deadline"]) if shown["deadline"] is not None else None
    until = f"what runs there is stopped at {when(deadline)}" if deadline else "it empties"
    echo(f"✔ Draining node {args.node}: no new placements; {until} ({args.reason})")
    return 0


async def uncordon_node(args: argparse.Namespace, api: Api) -> int:
    await api.call(UNCORDON, {"node": args.node})
    echo(f"✔ Uncordoned node {args.node}: placements again")
    return 0


async def list_nodes(_: argparse.Namespace, api: Api) -> int:
    nodes: list[dict[str, Any]] = (await api.call(NODES))["nodes"]
    if not nodes:
        echo("No nodes found.")
        return 0
    table = plain_table(
        "NODE", "CLUSTER", "INSTANCE", "STATE", "GPUS_USED", "REASON", "BY", "SINCE", "DEADLINE"
    )
    for node in nodes:
        state = "up" if node["service"] == "ready" else node["service"]
        if state == "draining" and not node["gpus_used"]:
            state = "drained"  # emptied: nothing left to wait for (Slurm's DRAINED)
        if node["state"] == "lost":
            state = "lost" if state == "up" else f"lost, {state}"
        deadline = node.get("deadline")
        table.add_row(
            node["name"],
            node["cluster"],
            f"{node['gpu_type'] or 'cpu'}x{node['gpus']}",
            state,
            str(node["gpus_used"]),
            node["reason"] or DASH,
            node["by"] or DASH,
            when(to_datetime(node["since"])) if node["since"] else DASH,
            when(to_datetime(deadline)) if deadline is not None else DASH,
        )
    make_console().print(table)
    return 0
