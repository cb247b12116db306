"""The read resolvers: ``getRunsPaginated``, ``getClusters`` and ``getUsers``.

A listing by name (``filters.name``: exact names, as the client sends them) folds each named run
from its own history, so a run is found the moment its request is answered (read-your-writes:
``mcli describe run`` right after ``mcli run``, the lookups before stop and delete). Other
listings come from the projector's rows (``projections.query``, as the CLI's listings do), filtered
by MAPI's filters (section 4.1) and by who asks (``events.access.visible``): a user sees their
own runs only, whatever ``entity`` names; an admin sees everyone's. Without ``entity`` a listing
is the caller's own runs; ``entity.organizationIds`` (``--all-users``) means every run the caller
may see, ``entity.emails``/``userIds`` those users' runs. The cursor is opaque to the client:
``<created_at>:<run_uid>`` of the page's last run, which ``projections.query`` resumes after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from graphql import GraphQLResolveInfo

from events.access import Principal, sees_runs_of, visible
from events.status import RunStatus
from projections import query
from projections.run_status import RunRow
from projections.utilization import ClusterUtilization
from services.api import wire
from services.api.context import Context, context_of
from services.api.errors import BadRequest
from services.api.settings import ApiSettings

ORGANIZATION = {"id": "runplane", "name": "runplane", "isDatabricksInternal": False}
Json = dict[str, Any]


# --- runs -------------------------------------------------------------------------------------


def _ms(text: str | None, field: str) -> int | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{field} is not an ISO 8601 datetime: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _bounds(window: Json | None, field: str) -> tuple[int | None, int | None]:
    """``[after, before)`` in ms of a DateRangeFilter."""
    if not window:
        return None, None
    after = _ms(window.get("gte"), f"{field}.gte")
    if (gt := _ms(window.get("gt"), f"{field}.gt")) is not None:
        after = max(after or gt + 1, gt + 1)
    before = _ms(window.get("lt"), f"{field}.lt")
    if (lte := _ms(window.get("lte"), f"{field}.lte")) is not None:
        before = min(before or lte + 1, lte + 1)
    return after, before


def _in(filters: Json, key: str) -> list[Any] | None:
    chosen = filters.get(key)
    if not chosen:
        return None
    values = list(chosen.get("in") or [])
    if chosen.get("equals") is not None:
        values.append(chosen["equals"])
    return values


def _owners(principal: Principal, entity: Json | None) -> set[str] | None:
    """Whose runs are asked for (None: everyone's the caller may see)."""
    if not entity:
        return {principal.name}
    named = set(entity.get("emails") or []) | set(entity.get("userIds") or [])
    if named:
        return named
    return None  # organizationIds: the whole deployment is one organization


@dataclass(frozen=True)
class RunQuery:
    """``GetRunsPaginatedInput`` read and checked: MAPI's filters (section 4.1), ANDed."""

    principal: Principal
    owners: set[str] | None
    statuses: list[str] | None
    names: list[str] | None
    clusters: list[str] | None
    gpu_types: list[str] | None
    gpu_nums: list[int] | None
    run_types: list[str] | None
    created: tuple[int | None, int | None]
    ended: tuple[int | None, int | None]
    include_deleted: bool
    limit: int
    cursor: str | None

    @classmethod
    def of(cls, data: Json, principal: Principal, settings: ApiSettings) -> RunQuery:
        filters: Json = data.get("filters") or {}
        statuses = _in(filters, "status")
        if statuses is not None and not set(statuses) <= wire.status_names():
            unknown = sorted(set(statuses) - wire.status_names())
            raise BadRequest(f"unknown status {unknown[0]!r}")
        limit = data.get("limit")
        if limit is None:
            limit = settings.api_default_limit
        if limit < 1:
            raise BadRequest("limit must be at least 1")
        cursor = data.get("cursor")
        if cursor is not None and not query.valid_cursor(cursor):
            raise BadRequest("cursor is not one this server gave")
        return cls(
            principal=principal,
            owners=_owners(principal, data.get("entity")),
            statuses=statuses,
            names=_in(filters, "name"),
            clusters=_in(filters, "clusterName"),
            gpu_types=_in(filters, "gpuType"),
            gpu_nums=_in(filters, "gpuNum"),
            run_types=_in(filters, "runType"),
            created=_bounds(filters.get("createdAt"), "createdAt"),
            ended=_bounds(filters.get("endedAt"), "endedAt"),
            include_deleted=bool(data.get("includeDeleted")),
            limit=min(limit, settings.api_max_limit),
            cursor=cursor,
        )

    def keeps(self, row: RunRow) -> bool:
        after, before = self.created
        return (
            visible(self.principal, row.created_by, row.run_uid)
            and (self.owners is None or row.created_by in self.owners)
            and (self.include_deleted or not row.is_deleted)
            and (self.statuses is None or row.status.value in self.statuses)
            and (self.names is None or row.name in self.names)
            and (self.clusters is None or row.requested_cluster in self.clusters)
            and (self.gpu_types is None or row.gpu_type in self.gpu_types)
            and (self.gpu_nums is None or row.gpus in self.gpu_nums)
            and (self.run_types is None or wire.RUN_TYPE in self.run_types)
            and (after is None or row.created_at >= after)
            and (before is None or row.created_at < before)
        )

    def ended_within(self, attempts: list[Any]) -> bool:
        after, before = self.ended
        if after is None and before is None:
            return True
        ended = attempts[-1].ended_at if attempts else None
        if ended is None:
            return False
        return (after is None or ended >= after) and (before is None or ended < before)

    def one(self, values: list[Any] | None) -> Any:
        """The one value of a filter that names exactly one (an index to read), else None."""
        return values[0] if values is not None and len(values) == 1 else None


async def get_runs_paginated(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> Json:
    context = context_of(info)
    asked = RunQuery.of(args["getRunsPaginatedData"], context.principal, context.settings)
    if asked.names is not None:
        return await _named_page(context, asked)
    return await _listed_page(context, asked)


async def _named_page(context: Context, asked: RunQuery) -> Json:
    """Read-your-writes: each named run folded now from its own history."""
    assert asked.names is not None
    found = [
        view
        for view in await context.runs.named(asked.names)
        if asked.keeps(view[0]) and asked.ended_within(view[1])
    ]
    found.sort(key=lambda view: (view[0].created_at, view[0].run_uid), reverse=True)
    if asked.cursor is not None:
        score, _, run_uid = asked.cursor.partition(":")
        found = [v for v in found if (v[0].created_at, v[0].run_uid) < (int(score), run_uid)]
    page, has_next = found[: asked.limit], len(found) > asked.limit
    last = page[-1][0] if page else None
    return {
        "cursor": f"{last.created_at}:{last.run_uid}" if has_next and last else None,
        "hasNextPage": has_next,
        "runs": [wire.run(*view) for view in page],
    }


async def _listed_page(context: Context, asked: RunQuery) -> Json:
    """From the projector's rows, through the narrowest index the filters allow."""
    user = asked.one(list(asked.owners) if asked.owners is not None else None)
    if user is not None and not sees_runs_of(asked.principal, user):
        return {"cursor": None, "hasNextPage": False, "runs": []}
    runs: list[Json] = []
    has_next = False
    last: RunRow | None = None
    cursor = asked.cursor
    while True:
        page = await query.list_runs(
            context.redis,
            user=user,
            cluster=asked.one(asked.clusters),
            statuses=[RunStatus(s) for s in asked.statuses] if asked.statuses else None,
            gpu_type=asked.one(asked.gpu_types),
            after=asked.created[0],
            before=asked.created[1],
            include_deleted=asked.include_deleted,
            limit=asked.limit + 1,
            cursor=cursor,
        )
        kept = [row for row in page.runs if asked.keeps(row)]
        attempts_of = await query.attempts_of(context.redis, [row.run_uid for row in kept])
        for row in kept:
            attempts = attempts_of[row.run_uid]
            if not asked.ended_within(attempts):
                continue
            if len(runs) == asked.limit:
                has_next = True
                break
            runs.append(wire.run(row, attempts))
            last = row
        if has_next or page.next_cursor is None:
            break
        cursor = page.next_cursor
    next_cursor = f"{last.created_at}:{last.run_uid}" if has_next and last is not None else None
    return {"cursor": next_cursor, "hasNextPage": has_next, "runs": runs}


# --- clusters ---------------------------------------------------------------------------------


async def get_clusters(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = context_of(info)
    filters: Json = args["getClustersData"].get("filters") or {}
    names = _in(filters, "name")
    wanted_type = (filters.get("allowedSubmissionTypes") or {}).get("has")
    if wanted_type is not None and wanted_type not in wire.SUBMISSION_TYPES:
        return []
    found = [c for c in await query.utilization(context.redis) if c.instances]
    return [_cluster(c) for c in found if names is None or c.cluster in names]


def _cluster(cluster: ClusterUtilization) -> Json:
    gpu_type = cluster.instances[0].gpu_type if cluster.instances else None
    instances = [wire.instance(i) for i in cluster.instances]
    return {
        "id": cluster.cluster,
        "name": cluster.cluster,
        "provider": wire.PROVIDER,
        "allowFractional": True,
        "allowMultinode": True,
        "allowedSubmissionTypes": list(wire.SUBMISSION_TYPES),
        "isMultiTenant": True,
        "reservationType": None,
        "schedulerEnabled": True,
        "allowedInstances": instances,
        "utilization": {
            "instanceUtils": [
                {
                    "instance": shown,
                    "clusterId": cluster.cluster,
                    "gpusUsed": i.gpus_used,
                    "gpusAvailable": i.gpus_available,
                    "gpusTotal": i.gpus_total,
                }
                for i, shown in zip(cluster.instances, instances, strict=True)
            ],
            "activeRunsByUser": [wire.run_line(r, gpu_type) for r in cluster.active_runs],
            "queuedRunsByUser": [wire.run_line(q.run, gpu_type) for q in cluster.queued_runs],
            "activeDeploymentsByUser": [],
            "queuedDeploymentsByUser": [],
        },
    }


# --- users ------------------------------------------------------------------------------------


async def get_users(_: object, info: GraphQLResolveInfo[Context], **__: Any) -> list[Json]:
    name = context_of(info).principal.name
    return [{"id": name, "name": name, "email": name, "organizations": [ORGANIZATION]}]


RESOLVERS: dict[str, Callable[..., Any]] = {
    "getRunsPaginated": get_runs_paginated,
    "getClusters": get_clusters,
    "getUsers": get_users,
}
