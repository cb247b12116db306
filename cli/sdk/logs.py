"""mcli's log functions: ``get_run_logs`` (what is there now) and ``follow_run_logs`` (and
then each new line until the resumption ends). Both yield ``str`` lines ending in a newline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from cli.client import Client
from cli.logsel import NoLogs, choose, follow, read, wait_scheduled
from cli.models import Run
from cli.reads import fetch_run
from cli.sdk.sync import iterate


def _check(rank: int | None, node_rank: int | None, failed: bool) -> int | None:
    if rank is not None and node_rank is not None and rank != node_rank:
        raise ValueError("give rank or node_rank, not both")
    chosen = rank if rank is not None else node_rank
    if failed and chosen is not None:
        raise ValueError("failed=True picks the first failed rank: do not give a rank with it")
    return chosen


def get_run_logs(
    run: Run | str,
    rank: int | None = None,
    *,
    node_rank: int | None = None,
    failed: bool = False,
    resumption: int | None = None,
    tail: int | None = None,
) -> Iterator[str]:
    """The run's output so far: of rank 0 (or ``rank``, or the first failed one), of the
    latest resumption (or ``resumption``). Nothing for a run not scheduled yet."""
    chosen = _check(rank, node_rank, failed)
    name = run.run_uid if isinstance(run, Run) else run

    async def work(client: Client) -> AsyncIterator[str]:
        current = await fetch_run(client, name)
        try:
            target = await choose(
                client, current, rank=chosen, failed=failed, resumption=resumption
            )
        except NoLogs:
            return
        for line in await read(client, target, tail):
            yield line

    return iterate(work)


def follow_run_logs(
    run: Run | str,
    rank: int | None = None,
    *,
    node_rank: int | None = None,
    failed: bool = False,
    resumption: int | None = None,
    tail: int | None = None,
) -> Iterator[str]:
    """The run's output, then each new line until the resumption ends; waits for a run that
    is not scheduled yet."""
    chosen = _check(rank, node_rank, failed)
    name = run.run_uid if isinstance(run, Run) else run

    async def work(client: Client) -> AsyncIterator[str]:
        current = await fetch_run(client, name)
        attempt = current.latest_resumption.index if resumption is None else resumption
        current = await wait_scheduled(client, current, attempt)
        try:
            target = await choose(
                client, current, rank=chosen, failed=failed, resumption=resumption
            )
        except NoLogs:
            return
        async for line in follow(client, target, tail):
            yield line

    return iterate(work)
