"""runplane's own reads, beside MAPI's: what ``mcli`` and the SDK show that MAPI has no shape for.

Each answer is the read models' own structs as JSON (``msgspec.to_builtins``: a run's row and
attempts, a cluster's utilization, a billing report, audit entries, a run's recorded events),
so the CLI folds and renders exactly what the projector stores; the CLI decodes them into the
same structs (``msgspec.convert``). Who may read what is ``events.access``: a user reads their
own runs, an admin anyone's; a run that is not the caller's is "not found"; billing and the
audit of everyone are an admin's.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import msgspec

from events.access import Action, sees_runs_of, visible
from projections import query
from projections.billing import DIMENSIONS
from services.api import wire
from services.api.wire import RunSelection, WireRecord

if TYPE_CHECKING:  # the CLI imports this module's wire types: it need not load graphql-core
    from graphql import GraphQLResolveInfo
from services.api.context import Context, context_of, require_admin
from services.api.errors import BadRequest
from services.core.archive import ArchivedLog

Json = dict[str, Any]
_PAGE = 200


def _convert(value: Any, type_: type[Any], what: str) -> Any:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as error:
        raise BadRequest(f"{what}: {error}") from None


async def whoami(_: object, info: GraphQLResolveInfo[Context], **__: Any) -> Json:
    principal = context_of(info).principal
    via = principal.via
    return {
        "name": principal.name,
        "role": principal.role,
        "run": None if via is None else via.run,
        "attempt": None if via is None else via.attempt,
    }


async def run_history(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Any]:
    """A run's events, if the caller may ``action`` it (an admin, another user's run only with
    ``allUsers``: the CLI's --all-users)."""
    context = context_of(info)
    try:
        action = Action[args.get("action") or "EVENTS"]
    except KeyError:
        raise BadRequest(
            f"action: {args['action']!r} is not one of {', '.join(Action.__members__)}"
        ) from None
    _, records = await context.runs.history(
        context.principal, args["name"], action, all_users=bool(args.get("allUsers", True))
    )
    return [msgspec.to_builtins(WireRecord.of(record)) for record in records]


async def run_views(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Any]:
    """Runs newest first, as the projector has them, filtered; at most ``limit``."""
    context = context_of(info)
    asked: RunSelection = _convert(args["selection"], RunSelection, "selection")
    principal = context.principal
    if asked.cursor is not None and not query.valid_cursor(asked.cursor):
        raise BadRequest("selection.cursor is not one this server gave")
    user = asked.user or (None if asked.all_users else principal.name)
    if user is not None and not sees_runs_of(principal, user):
        return []
    if asked.by_name_only():
        # Runs named exactly (a run's page, describe): looked up by name and folded from their
        # histories, as MAPI's name filter is, rather than searched for in the listing.
        named = [
            wire.view(row, attempts)
            for row, attempts in await context.runs.named(asked.names)
            if visible(principal, row.created_by, row.run_uid)
            and (user is None or row.created_by == user)
            and (asked.include_deleted or not row.is_deleted)
        ]
        named.sort(
            key=lambda view: (view["row"]["created_at"], view["row"]["run_uid"]), reverse=True
        )
        return named[: asked.limit] if asked.limit is not None else named
    found: list[Any] = []
    cursor = asked.cursor
    while True:
        page = await query.list_runs(
            context.redis,
            user=user,
            cluster=asked.cluster,
            statuses=asked.statuses,
            names=asked.names or None,
            gpu_type=asked.gpu_type,
            after=asked.after,
            before=asked.before,
            include_deleted=asked.include_deleted,
            parent=asked.parent,
            limit=_PAGE if asked.limit is None else max(asked.limit, 1),
            cursor=cursor,
        )
        kept = [
            row
            for row in page.runs
            if visible(principal, row.created_by, row.run_uid)
            and (asked.gpu_num is None or row.gpus == asked.gpu_num)
        ]
        attempts_of = await query.attempts_of(context.redis, [row.run_uid for row in kept])
        for row in kept:
            found.append(wire.view(row, attempts_of[row.run_uid]))
            if asked.limit is not None and len(found) >= asked.limit:
                return found
        cursor = page.next_cursor
        if cursor is None:
            return found


async def utilization(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Any]:
    context = context_of(info)
    names = args.get("clusters")
    found = await query.utilization(context.redis, names or None)
    return [msgspec.to_builtins(cluster) for cluster in found]


async def billing(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> Any:
    context = context_of(info)
    await require_admin(context, "read the bill")
    by = args["by"]
    if by not in DIMENSIONS:
        raise BadRequest(f"by: {by!r} is not one of {', '.join(DIMENSIONS)}")
    since, until, now = args.get("since"), args.get("until"), int(args["now"])
    window = None if since is None and until is None else (int(since or 0), int(until or now))
    report = await query.billing_report(
        context.redis, by, window=window, now=now, prices=_prices(args.get("prices"))
    )
    names: dict[str, str] = {}
    if by == "run":
        for line in report.lines:
            if (row := await query.get_run(context.redis, line.key)) is not None:
                names[line.key] = row.name
    return {
        "report": msgspec.to_builtins(report),
        "names": names,
        "rows": report.rows(names),
        "total": report.total_row(),
    }


def _prices(raw: Any) -> dict[str, Decimal] | None:
    if not raw:
        return None
    if not isinstance(raw, dict):
        raise BadRequest('prices: expected an object like {"a100_80gb": "2.5"}')
    try:
        return {str(k): Decimal(str(v)) for k, v in raw.items()}
    except InvalidOperation:
        raise BadRequest('prices: each price is a number, like {"a100_80gb": "2.5"}') from None


async def audit(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Any]:
    """One run's trail (its owner's, or an admin's), else an admin's view of everyone's."""
    context = context_of(info)
    run_uid = None
    if (run := args.get("run")) is not None:
        run_uid, _ = await context.runs.history(context.principal, run, Action.AUDIT)
    else:
        await require_admin(context, "read everyone's audit trail")
    since, until = args.get("since"), args.get("until")
    window = None if since is None and until is None else (int(since or 0), int(until or 2**62))
    limit = args.get("limit") or 1000
    if limit < 1:
        raise BadRequest("limit must be at least 1")
    entries = await query.audit(
        context.redis,
        user=args.get("user"),
        run=run_uid,
        window=window,
        limit=limit,
        log=[ArchivedLog(context.redis, p) for p in range(context.settings.partitions)],
    )
    return [msgspec.to_builtins(entry) for entry in entries]


QUERIES: dict[str, Callable[..., Any]] = {
    "whoami": whoami,
    "runHistory": run_history,
    "runViews": run_views,
    "utilization": utilization,
    "billing": billing,
    "audit": audit,
}
