"""What the CLI and the SDK read: runs (one, or a filtered listing) and clusters.

One run by name is folded from its own history with the projector's own folds, so it is never
stale right after a request (read-your-writes) and reads exactly as the stored rows would.
Listings read the projector's rows (``projections.query``). Selecting runs for stop/delete:
plain names are resolved from their history (a run just submitted is found), globs and
filters through the listing.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace

from cli.client import Client
from cli.errors import NotFound
from cli.models import Run, build_run
from events.access import Action
from events.fit import unknown_cluster
from events.status import RunStatus
from projections.runview import fold_run
from projections.utilization import ClusterUtilization
from services.api.wire import RunSelection

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class RunFilters:
    """``get runs``'s filters (and stop's, delete's). Times are ms since the epoch."""

    names: tuple[str, ...] = ()  # globs
    cluster: str | None = None
    before: int | None = None
    after: int | None = None
    gpu_type: str | None = None
    gpu_num: int | None = None
    statuses: frozenset[RunStatus] | None = None
    user: str | None = None  # None: the current user's runs, unless all_users
    all_users: bool = False
    include_deleted: bool = False
    limit: int | None = 50

    @property
    def narrows(self) -> bool:
        """True if any filter beyond the names is given."""
        return any(
            value is not None
            for value in (
                self.cluster,
                self.before,
                self.after,
                self.gpu_type,
                self.gpu_num,
                self.statuses,
                self.user,
            )
        )

    def keeps(self, run: Run, current_user: str) -> bool:
        user = self.user or (None if self.all_users else current_user)
        created = int(run.created_at.timestamp() * 1000)
        return (
            (self.include_deleted or not run.is_deleted)
            and (user is None or run.created_by == user)
            and (self.cluster is None or run.requested_cluster == self.cluster)
            and (self.statuses is None or run.status in self.statuses)
            and (self.gpu_type is None or run.gpu_type == self.gpu_type)
            and (self.gpu_num is None or run.gpus == self.gpu_num)
            and (self.after is None or created >= self.after)
            and (self.before is None or created < self.before)
            and (not self.names or any(fnmatch.fnmatchcase(run.name, g) for g in self.names))
        )


def has_glob(pattern: str) -> bool:
    return bool(_GLOB_CHARS & set(pattern))


async def fetch_run(
    client: Client, run: str, action: Action = Action.DESCRIBE, *, all_users: bool = True
) -> Run:
    """The run named ``run`` (name or run_uid), folded now from its own history; the server
    refuses it unless this user may ``action`` it (another user's takes ``all_users``)."""
    run_id, records = await client.history(run, action, all_users=all_users)
    folded = fold_run(run_id, records)
    if folded is None:
        raise NotFound(f"Run {run} not found")
    return build_run(*folded)


async def named_run(client: Client, run: str, action: Action, *, all_users: bool) -> Run:
    """The run named ``run`` (as ``fetch_run``), if this user may ``action`` it
    (``Forbidden`` if it is another user's, unless ``all_users``)."""
    return await fetch_run(client, run, action, all_users=all_users)


async def list_runs(client: Client, filters: RunFilters) -> list[Run]:
    """Runs newest first, as the projector has them, filtered; at most ``filters.limit``."""
    selection = RunSelection(
        names=list(filters.names),
        cluster=filters.cluster,
        before=filters.before,
        after=filters.after,
        gpu_type=filters.gpu_type,
        gpu_num=filters.gpu_num,
        statuses=sorted(filters.statuses) if filters.statuses is not None else None,
        user=filters.user,
        all_users=filters.all_users,
        include_deleted=filters.include_deleted,
        limit=filters.limit,
    )
    return [build_run(row, attempts) for row, attempts in await client.views(selection)]


async def children_of(client: Client, run: Run, limit: int = 100) -> list[Run]:
    """The runs submitted from ``run`` that this user sees, newest first, at most ``limit``."""
    selection = RunSelection(parent=run.name, all_users=True, include_deleted=True, limit=limit)
    return [build_run(row, attempts) for row, attempts in await client.views(selection)]


async def select_runs(
    client: Client,
    patterns: list[str],
    filters: RunFilters,
    *,
    every: bool,
    action: Action = Action.DESCRIBE,
) -> list[Run]:
    """The runs a stop or delete (``action``) applies to: named ones (each must exist and be
    this user's to ``action``, which the server says before anything is asked; kept even if
    deleted: the caller checks), the ones matching globs or filters, or ``every`` run of the
    user's (of every user with ``all_users``)."""
    exact = [p for p in patterns if not has_glob(p)]
    globs = tuple(p for p in patterns if has_glob(p))
    unlimited = replace(filters, limit=None, names=())
    # A named run is checked (whose, deleted) by the caller, never silently filtered out.
    named = replace(unlimited, all_users=True, include_deleted=True)
    chosen: dict[str, Run] = {}
    for name in exact:
        run = await fetch_run(client, name, action, all_users=filters.all_users)
        if named.keeps(run, client.user):
            chosen[run.run_uid] = run
    if globs or every or (not exact and filters.narrows):
        listed = await list_runs(client, replace(unlimited, names=globs))
        for run in listed:
            chosen.setdefault(run.run_uid, run)
    return sorted(chosen.values(), key=lambda r: r.created_at, reverse=True)


async def named_or_latest(
    client: Client, run: str | None, action: Action, *, all_users: bool
) -> Run:
    """The run named ``run`` (as ``named_run``), or the user's newest when ``run`` is None."""
    if run is None:
        return await latest_run(client)
    return await named_run(client, run, action, all_users=all_users)


async def latest_run(client: Client) -> Run:
    """The current user's newest run (``describe run`` and ``logs`` without a name)."""
    runs = await list_runs(client, RunFilters(limit=1))
    if not runs:
        raise NotFound("No runs found: submit one with `mcli run -f <yaml>`")
    return await fetch_run(client, runs[0].run_uid)


async def clusters(client: Client, names: list[str] | None = None) -> list[ClusterUtilization]:
    """Utilization of every cluster with registered nodes (or of ``names``; unknown ones are
    an error that lists the known ones)."""
    known = [c for c in await client.utilization() if c.instances]
    if names:
        missing = [n for n in names if n not in {c.cluster for c in known}]
        if missing:
            raise NotFound(unknown_cluster(missing[0], [c.cluster for c in known]))
        return [c for c in known if c.cluster in names]
    return known
