"""mcli's run functions: create, get, list, stop, start, delete, update (scheduling or
metadata), wait and watch.

Synchronous like mcli's (``update_run_metadata`` may return a future, as mcli's does). A run
is given as a ``Run`` or its name (or run_uid). Reads of one run fold its own history (never
stale after a write); listings read the projector's rows. Errors are
``cli.client.ClientError`` (``NotFound``: "Run X not found"); arguments that cannot be right
(an unknown status, a time that is none, nothing to update) are ``ValueError``, raised before
anything is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Literal, overload

from cli.client import Client, ClientError
from cli.criteria import moment_ms, status_set
from cli.models import Run, bind_actions
from cli.reads import RunFilters, fetch_run, list_runs
from cli.sdk import background
from cli.sdk.sync import call, iterate
from cli.submit import submit_config
from events import commands
from events.config import RunConfig, load_file
from events.metadata import carried
from events.spec import PRIORITIES, Priority
from events.status import RunStatus

RunRef = Run | str
_POLL_S = 0.25
#: Set, it replaces the timeout of a call that waits for its answer (as in mcli).
TIMEOUT_ENV = "MCLI_TIMEOUT"
log = logging.getLogger(__name__)


def _name(run: RunRef) -> str:
    return run.run_uid if isinstance(run, Run) else run


def create_run(run: RunConfig | dict[str, Any] | str, *, timeout: float | None = 10) -> Run:
    """Submit a run (a RunConfig, its fields as a dict, or the path of a run YAML); the Run as
    submitted."""
    if isinstance(run, dict):
        config = RunConfig.from_dict(run)
    elif isinstance(run, str):
        config = load_file(run)[0]
    else:
        config = run

    async def work(client: Client) -> Run:
        run, _, _ = await submit_config(client, config)
        return run

    return call(work)


def get_run(run: RunRef, *, include_details: bool = True) -> Run:
    """The run, read from its own history just now."""
    return call(lambda client: fetch_run(client, _name(run)))


def get_runs(
    runs: RunRef | Sequence[RunRef] | None = None,
    *,
    cluster_names: str | Sequence[str] | None = None,
    before: datetime | str | None = None,
    after: datetime | str | None = None,
    gpu_types: str | Sequence[str] | None = None,
    gpu_nums: int | Sequence[int] | None = None,
    statuses: str | Sequence[RunStatus | str] | None = None,
    user_emails: str | Sequence[str] | None = None,
    include_deleted: bool = False,
    limit: int | None = 50,
) -> list[Run]:
    """Runs newest first, filtered as ``mcli get runs`` filters them. Each filter takes one
    value or a list; times and statuses as the CLI's ``--after``/``--before``/``--status``
    take them, and datetimes (``cli.criteria``); a bad one is a ``ValueError``."""
    names = tuple(_name(r) if isinstance(r, str) else r.name for r in _listed(runs))
    wanted = status_set(statuses) if statuses else None
    after_ms = None if after is None else moment_ms(after)
    before_ms = None if before is None else moment_ms(before)
    types: list[str] = _listed(gpu_types)
    nums: list[int] = _listed(gpu_nums)

    async def work(client: Client) -> list[Run]:
        found: list[Run] = []
        clusters: list[str | None] = [*_listed(cluster_names)] or [None]
        users: list[str | None] = [*_listed(user_emails)] or [None]
        for cluster in clusters:
            for user in users:
                found += await list_runs(
                    client,
                    RunFilters(
                        names=names,
                        cluster=cluster,
                        statuses=wanted,
                        user=user,
                        before=before_ms,
                        after=after_ms,
                        include_deleted=include_deleted,
                        limit=None,
                    ),
                )
        unique = {run.run_uid: run for run in found}.values()
        kept = [
            run
            for run in unique
            if (not types or run.gpu_type in types) and (not nums or run.gpus in nums)
        ]
        kept.sort(key=lambda run: run.created_at, reverse=True)
        return kept[:limit] if limit is not None else kept

    return call(work)


def _listed(value: object) -> list[Any]:
    """One value or a list of them, as a list (a str is one name, not a list of letters)."""
    if value is None:
        return []
    if isinstance(value, str | int | Run):
        return [value]
    assert isinstance(value, Iterable)
    return list(value)


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
    """Change the run's scheduling fields (None leaves a field as it is); a ``ValueError`` if
    none is given."""
    changes: dict[str, Any] = {
        "priority": priority,
        "preemptible": preemptible,
        "max_retries": max_retries,
        "retry_on_system_failure": retry_on_system_failure,
        "max_duration": max_duration,
    }
    if all(value is None for value in changes.values()):
        *most, last = changes
        raise ValueError(f"nothing to update: give {', '.join(most)} or {last}")
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
            commands.UpdateRun(actor=c.user, **changes),
        )
    )


@overload
def update_run_metadata(
    run: RunRef,
    metadata: Mapping[str, Any],
    *,
    timeout: float | None = 10,
    future: Literal[False] = False,
    protect: bool = False,
) -> Run: ...


@overload
def update_run_metadata(
    run: RunRef,
    metadata: Mapping[str, Any],
    *,
    timeout: float | None = 10,
    future: Literal[True],
    protect: bool = False,
) -> Future[Run]: ...


@overload
def update_run_metadata(
    run: RunRef,
    metadata: Mapping[str, Any],
    *,
    timeout: float | None = 10,
    future: bool = False,
    protect: bool = False,
) -> Run | Future[Run]: ...


def update_run_metadata(
    run: RunRef,
    metadata: Mapping[str, Any],
    *,
    timeout: float | None = 10,
    future: bool = False,
    protect: bool = False,
) -> Run | Future[Run]:
    """Merge ``metadata`` into the run's: the keys given take these values, the others stay.

    As mcli's: NaN and the infinities are sent as the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"``; a value that cannot be sent as JSON is left out, with a warning naming its
    key. The request runs on the SDK's threads (``cli.sdk.background``): with ``future`` this
    returns at once with a ``concurrent.futures.Future`` of the updated Run; otherwise it waits
    ``timeout`` seconds at most (``MCLI_TIMEOUT`` replaces it; None: no limit) for the Run,
    else ``TimeoutError``. With ``protect`` the request is carried through a SIGTERM: the
    process ends only once it is done (how a run's last flush reaches the server while the
    run is being stopped)."""
    sent = _sendable(metadata)
    wait_s = None if future else _timeout(timeout)

    async def work(client: Client) -> Run:
        return await _request(
            client, run, commands.UpdateMetadata(actor=client.user, metadata=sent)
        )

    pending = background.submit(lambda: call(work), protect=protect)
    if future:
        return pending
    return pending.result(timeout=wait_s)


def _sendable(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` as JSON can carry it: non-finite floats as strings, without the values
    JSON cannot encode (as mcli's SDK leaves them out)."""
    kept: dict[str, Any] = {}
    left_out: list[str] = []
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):  # not JSON, or a value that holds itself
            left_out.append(str(key))
        else:
            kept[key] = carried(value)
    if left_out:
        log.warning(
            "metadata of %s left out: its value cannot be sent as JSON",
            ", ".join(repr(key) for key in left_out),
        )
    return kept


def _timeout(given: float | None) -> float | None:
    if configured := os.environ.get(TIMEOUT_ENV):
        try:
            return float(configured)
        except ValueError:
            raise ClientError(f"{TIMEOUT_ENV}={configured!r} is not a number of seconds") from None
    return given


def wait_for_run_status(run: RunRef, status: RunStatus | str, timeout: float | None = None) -> Run:
    """Wait until the run reached ``status`` (or a later one, or ended); ``TimeoutError``
    after ``timeout`` seconds, ``ValueError`` for a status that does not exist."""
    target = RunStatus.parse(status)
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
