"""mcli's log functions: ``get_run_logs`` (what is there now) and ``follow_run_logs`` (and
then each new line until the resumption ends). Both yield ``str`` lines ending in a newline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from cli.client import Client
from cli.logsel import LogTarget, NoLogs, choose, follow, read, wait_scheduled
from cli.models import Run
from cli.reads import fetch_run
from cli.sdk.sync import iterate


class _Pick:
    """Which rank's output the caller asked for, checked before anything is read."""

    def __init__(
        self,
        run: Run | str,
        rank: int | None,
        node_rank: int | None,
        failed: bool,
        resumption: int | None,
    ) -> None:
        if rank is not None and node_rank is not None and rank != node_rank:
            raise ValueError("give rank or node_rank, not both")
        self.rank = rank if rank is not None else node_rank
        if failed and self.rank is not None:
            raise ValueError("failed=True picks the first failed rank: do not give a rank with it")
        self.name = run.run_uid if isinstance(run, Run) else run
        self.failed, self.resumption = failed, resumption

    def target(self, run: Run) -> LogTarget | None:
        """The rank's lines to read; None where the run has none (not scheduled yet)."""
        try:
            return choose(run, rank=self.rank, failed=self.failed, resumption=self.resumption)
        except NoLogs:
            return None


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
    pick = _Pick(run, rank, node_rank, failed, resumption)

    async def work(client: Client) -> AsyncIterator[str]:
        target = pick.target(await fetch_run(client, pick.name))
        if target is not None:
            for line in await read(client, target, tail):
                yield line

    return iterate(work)


# The same arguments as get_run_logs, on purpose: mcli's signature for both.
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
    pick = _Pick(run, rank, node_rank, failed, resumption)

    async def work(client: Client) -> AsyncIterator[str]:
        current = await fetch_run(client, pick.name)
        attempt = current.latest_resumption.index if resumption is None else resumption
        target = pick.target(await wait_scheduled(client, current, attempt))
        if target is not None:
            async for line in follow(client, target, tail):
                yield line

    return iterate(work)
