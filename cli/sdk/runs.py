"""mcli's run functions: create, get, list, stop, start, delete, update, wait and watch.

Synchronous like mcli's. A run is given as a ``Run`` or its name (or run_uid). Reads of one run
fold its own history (never stale after a write); listings read the projector's rows. Errors
are ``cli.client.ClientError`` (``NotFound``: "Run X not found").
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime

from cli.client import Client, ClientError
from cli.config import RunConfig, load_file
from cli.models import Run, bind_actions
from cli.reads import RunFilters, fetch_run, list_runs
from cli.sdk.sync import call, iterate
from cli.submit import submit_config
from events import commands
from events.spec import PRIORITIES, Priority
from events.status import RunStatus

RunRef = Run | str
_POLL_S = 0.25


def _name(run: RunRef) -> str:
    return run.run_uid if isinstance(run, Run) else run


def create_run(run: RunConfig | str, *, timeout: float | None = 10) -> Run:
    """Submit a run (a RunConfig, or the path of a run YAML); the Run as submitted."""
    config = load_file(run)[0] if isinstance(run, str) else run

    async def work(client: Client) -> Run:
        name, _, _ = await submit_config(client, config)
        return await fetch_run(client, name)

    return call(work)


def get_run(run: RunRef, *, include_details: bool = True) -> Run:
    """The run, read from its own history just now."""
    return call(lambda client: fetch_run(client, _name(run)))


def get_runs(
    runs: Sequence[RunRef] | None = None,
    *,
    cluster_names: Sequence[str] | None = None,
    before: datetime | None = None,
    after: datetime | None = None,
    gpu_types: Sequence[str] | None = None,
    gpu_nums: Sequence[int] | None = None,
    statuses: Sequence[RunStatus | str] | None = None,
    user_emails: Sequence[str] | None = None,
    include_deleted: bool = False,
    limit: int | None = 50,
) -> list[Run]:
    """Runs newest first, filtered as ``mcli get runs`` filters them."""
    names = tuple(_name(r) if isinstance(r, str) else r.name for r in runs or ())
    wanted = (
        frozenset(s if isinstance(s, RunStatus) else RunStatus.from_string(s) for s in statuses)
        if statuses
        else None
    )

    async def work(client: Client) -> list[Run]:
        found: list[Run] = []
        clusters: list[str | None] = [*cluster_names] if cluster_names else [None]
        users: list[str | None] = [*user_emails] if user_emails else [None]
        for cluster in clusters:
            for user in users:
                found += await list_runs(
                    client,
                    RunFilters(
                        names=names,
                        cluster=cluster,
                        statuses=wanted,
                        user=user,
                        before=_ms(before),
                        after=_ms(after),
                        include_deleted=include_deleted,
                        limit=None,
                    ),
                )
        unique = {run.run_uid: run for run in found}.values()
        kept = [
            run
            for run in unique
            if (not gpu_types or run.gpu_type in gpu_types)
            and (not gpu_nums or run.gpus in gpu_nums)
        ]
        kept.sort(key=lambda run: run.created_at, reverse=True)
        return kept[:limit] if limit is not None else kept

    return call(work)


def _ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


async def _request(client: Client, run: RunRef, command: commands.Command) -> Run:
    await client.request(_name(run), command)
    return await fetch_run(client, _name(run))


def stop_run(run: RunRef, *, reason: str = "") -> Run:
    """Stop the run's latest resumption (a waiting one at once, a running one via TERMINATING)."""
    return call(lambda c: _request(c, run, commands.StopRun(actor=c.user, reason=reason)))


def stop_runs(runs: Sequence[RunRef]) -> list[Run]:
    return [stop_run(run) for run in runs]


def start_run(run: RunRef) -> Run:
    """Restart a finished run: a new resumption, back to PENDING, same name."""
    return call(lambda c: _request(c, run, commands.RestartRun(actor=c.user)))


def start_runs(runs: Sequence[RunRef]) -> list[Run]:
    return [start_run(run) for run in runs]


def delete_run(run: RunRef) -> Run:
    """Delete the run (an active one is stopped first)."""
    return call(lambda c: _request(c, run, commands.DeleteRun(actor=c.user)))


def delete_runs(runs: Sequence[RunRef]) -> list[Run]:
    return [delete_run(run) for run in runs]


def update_run(
    run: RunRef,
    *,
    priority: Priority | None = None,
    preemptible: bool | None = None,
    max_retries: int | None = None,
    retry_on_system_failure: bool | None = None,
    max_duration: float | None = None,
) -> Run:
    """Change the run's scheduling fields (None leaves a field as it is)."""
    if max_retries is not None and max_retries < 0:
        raise ClientError(f"max_retries must not be negative (got {max_retries})")
    if max_duration is not None and not max_duration > 0:
        raise ClientError(f"max_duration must be a positive number of hours (got {max_duration})")
    if priority is not None and priority not in PRIORITIES:
        raise ClientError(f"priority must be one of {', '.join(PRIORITIES)} (got {priority!r})")
    return call(
        lambda c: _request(
            c,
            run,
            commands.UpdateRun(
                actor=c.user,
                priority=priority,
                preemptible=preemptible,
                max_retries=max_retries,
                retry_on_system_failure=retry_on_system_failure,
                max_duration=max_duration,
            ),
        )
    )


def wait_for_run_status(run: RunRef, status: RunStatus | str, timeout: float | None = None) -> Run:
    """Wait until the run reached ``status`` (or a later one, or ended); ``TimeoutError``
    after ``timeout`` seconds."""
    target = status if isinstance(status, RunStatus) else RunStatus.from_string(status)
    deadline = None if timeout is None else time.monotonic() + timeout

    async def work(client: Client) -> Run:
        while True:
            current = await fetch_run(client, _name(run))
            if current.status.after(target, inclusive=True) or current.status.is_terminal():
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"Run {current.name} did not reach {target.display_name} within {timeout}s "
                    f"(it is {current.status.display_name})"
                )
            await asyncio.sleep(_POLL_S)

    return call(work)


def watch_run_status(run: RunRef, timeout: float | None = None) -> Iterator[Run]:
    """The run each time its status (or resumption) changes, until it is terminal."""
    deadline = None if timeout is None else time.monotonic() + timeout

    async def work(client: Client) -> AsyncIterator[Run]:
        seen: tuple[int, RunStatus] | None = None
        while True:
            current = await fetch_run(client, _name(run))
            now = (current.latest_resumption.index, current.status)
            if now != seen:
                seen = now
                yield current
            if current.status.is_terminal():
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Run {current.name} still {current.status.display_name}")
            await asyncio.sleep(_POLL_S)

    return iterate(work)


bind_actions(sys.modules[__name__])  # a Run's methods call the functions above
