"""The resolvers of an admin's nodes: ``nodes`` (``mcli admin nodes list``), ``cordonNode``,
``drainNode``, ``uncordonNode``; an admin's alone (403, recorded for the audit, for anyone
else: ``services.api.context.require_admin``).

Invariants: each request is decided on the node's own history (``node:<name>``) by the rules
of ``events.nodes`` and appended on that version (a lost race, a heartbeat's re-registration
say, re-reads and re-decides); the actor is the admin's key's owner. The scheduler, not the
API, ends what runs on a draining node, at the deadline and on the log's clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from graphql import GraphQLResolveInfo

from events.model import NodeEvent
from events.nodes import NodeRefused, NodeState, Request, decide, fold
from projections import query
from services.api.context import Context, context_of, require_admin
from services.api.errors import BadRequest, NotFound
from services.core.errors import VersionConflict

Json = dict[str, Any]
_TRIES = 20


async def _load(context: Context, name: str) -> NodeState:
    history = await context.runs.store.history(f"node:{name}")
    return fold(name, [r.event for r in history if isinstance(r.event, NodeEvent)])


def _shown(state: NodeState) -> Json:
    return {
        "name": state.name,
        "cluster": state.cluster,
        "service": state.service,
        "reason": state.reason,
        "by": state.by,
        "since": state.since,
        "deadline": state.deadline,
    }


async def _request(
    info: GraphQLResolveInfo[Context], what: str, name: str, request: Request, **fields: Any
) -> Json:
    context = context_of(info)
    await require_admin(context, what)
    store = context.runs.store
    for _ in range(_TRIES):
        state = await _load(context, name)
        try:
            event = decide(
                state, request, actor=context.principal.name, event_id=uuid.uuid4().hex, **fields
            )
        except NodeRefused as refused:
            error = NotFound if not state.registered else BadRequest
            raise error(str(refused)) from None
        try:
            await store.append([event], expected_version=state.version)
        except VersionConflict:
            continue
        return _shown(await _load(context, name))
    raise VersionConflict(f"node:{name}", -1, -1)


async def list_nodes(_: object, info: GraphQLResolveInfo[Context], **__: Any) -> list[Any]:
    context = context_of(info)
    await require_admin(context, "list nodes")
    return [msgspec.to_builtins(line) for line in await query.nodes(context.redis)]


async def cordon_node(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> Json:
    return await _request(info, "cordon nodes", args["node"], "cordon", reason=args["reason"])


async def drain_node(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> Json:
    seconds = args.get("deadlineSeconds")
    if seconds is not None and seconds < 0:
        raise BadRequest(f"deadlineSeconds: {seconds} is not a deadline")
    grace_ms = None if seconds is None else int(seconds * 1000)
    return await _request(
        info, "drain nodes", args["node"], "drain", reason=args["reason"], grace_ms=grace_ms
    )


async def uncordon_node(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> Json:
    return await _request(info, "uncordon nodes", args["node"], "uncordon")


QUERIES: dict[str, Callable[..., Any]] = {"nodes": list_nodes}
MUTATIONS: dict[str, Callable[..., Any]] = {
    "cordonNode": cordon_node,
    "drainNode": drain_node,
    "uncordonNode": uncordon_node,
}
