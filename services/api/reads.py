"""The read resolvers: ``getRunsPaginated``, ``getClusters`` and ``getUsers``.

Runs come from the projector's rows (``projections.query``, as the CLI's listings do), filtered
by MAPI's filters (section 4.1) and by who asks (``events.access.visible``): a user sees their
own runs only, whatever ``entity`` names; an admin sees everyone's. Without ``entity`` a listing
is the caller's own runs; ``entity.organizationIds`` (``--all-users``) means every run the caller
may see, ``entity.emails``/``userIds`` those users' runs. The cursor is opaque to the client:
``<created_at>:<run_uid>`` of the page's last run, which ``projections.query`` resumes after.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from graphql import GraphQLResolveInfo

from events.access import Principal, visible
from events.status import RunStatus
from projections import query
from projections.run_status import RunRow
from services.api import wire
from services.api.errors import BadRequest
from services.api.settings import ApiSettings

ORGANIZATION = {"id": "runplane", "name": "runplane", "isDatabricksInternal": False}
Json = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What every resolver is given: who asks, the read side of the store, the settings."""

    principal: Principal
    redis: aioredis.Redis
    settings: ApiSettings


def _context(info: GraphQLResolveInfo[Context]) -> Context:
    context = info.context
    assert isinstance(context, Context)
    return context


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


async def get_runs_paginated(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> Json:
    context = _context(info)
    data: Json = args["getRunsPaginatedData"]
    filters: Json = data.get("filters") or {}
    principal = context.principal
    owners = _owners(principal, data.get("entity"))
    statuses = _in(filters, "status")
    if statuses is not None and not set(statuses) <= wire.status_names():
        unknown = sorted(set(statuses) - wire.status_names())
        raise BadRequest(f"unknown status {unknown[0]!r}")
    names = _in(filters, "name")
    clusters = _in(filters, "clusterName")
    gpu_types = _in(filters, "gpuType")
    gpu_nums = _in(filters, "gpuNum")
    run_types = _in(filters, "runType")
    after, before = _bounds(filters.get("createdAt"), "createdAt")
    ended_after, ended_before = _bounds(filters.get("endedAt"), "endedAt")
    limit = data.get("limit")
    if limit is None:
        limit = context.settings.api_default_limit
    if limit < 1:
        raise BadRequest("limit must be at least 1")
    limit = min(limit, context.settings.api_max_limit)
    cursor = data.get("cursor")
    if cursor is not None and not _valid_cursor(cursor):
        raise BadRequest("cursor is not one this server gave")

    def keeps(row: RunRow) -> bool:
        return (
            visible(principal, row.created_by)
            and (owners is None or row.created_by in owners)
            and (clusters is None or row.requested_cluster in clusters)
            and (gpu_types is None or row.gpu_type in gpu_types)
            and (gpu_nums is None or row.gpus in gpu_nums)
            and (run_types is None or wire.RUN_TYPE in run_types)
        )

    one = next(iter(owners)) if owners is not None and len(owners) == 1 else None
    if one is not None and not visible(principal, one):
        return {"cursor": None, "hasNextPage": False, "runs": []}
    runs: list[Json] = []
    has_next = False
    last: RunRow | None = None
    while True:
        page = await query.list_runs(
            context.redis,
            user=one,
            cluster=clusters[0] if clusters is not None and len(clusters) == 1 else None,
            statuses=[RunStatus(s) for s in statuses] if statuses is not None else None,
            names=[glob.escape(n) for n in names] if names is not None else None,
            gpu_type=gpu_types[0] if gpu_types is not None and len(gpu_types) == 1 else None,
            after=after,
            before=before,
            include_deleted=bool(data.get("includeDeleted")),
            limit=limit + 1,
            cursor=cursor,
        )
        for row in page.runs:
            if not keeps(row):
                continue
            attempts = await query.attempts(context.redis, row.run_uid)
            if not _ended_within(attempts, ended_after, ended_before):
                continue
            if len(runs) == limit:
                has_next = True
                break
            runs.append(wire.run(row, attempts))
            last = row
        if has_next or page.next_cursor is None:
            break
        cursor = page.next_cursor
    next_cursor = f"{last.created_at}:{last.run_uid}" if has_next and last is not None else None
    return {"cursor": next_cursor, "hasNextPage": has_next, "runs": runs}


def _valid_cursor(cursor: str) -> bool:
    score, sep, run_uid = cursor.partition(":")
    return bool(sep and score.isdigit() and run_uid)


def _ended_within(attempts: list[Any], after: int | None, before: int | None) -> bool:
    if after is None and before is None:
        return True
    ended = attempts[-1].ended_at if attempts else None
    if ended is None:
        return False
    return (after is None or ended >= after) and (before is None or ended < before)


# --- clusters ---------------------------------------------------------------------------------


async def get_clusters(_: object, info: GraphQLResolveInfo[Context], **args: Any) -> list[Json]:
    context = _context(info)
    filters: Json = args["getClustersData"].get("filters") or {}
    names = _in(filters, "name")
    wanted_type = (filters.get("allowedSubmissionTypes") or {}).get("has")
    if wanted_type is not None and wanted_type not in wire.SUBMISSION_TYPES:
        return []
    found = [c for c in await query.utilization(context.redis) if c.instances]
    return [_cluster(c) for c in found if names is None or c.cluster in names]


def _cluster(cluster: query.ClusterUtilization) -> Json:
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
    name = _context(info).principal.name
    return [{"id": name, "name": name, "email": name, "organizations": [ORGANIZATION]}]


RESOLVERS: dict[str, Callable[..., Any]] = {
    "getRunsPaginated": get_runs_paginated,
    "getClusters": get_clusters,
    "getUsers": get_users,
}
