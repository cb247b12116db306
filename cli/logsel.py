"""Which output ``mcli logs`` and the SDK show: the resumption, the rank, and what to say
when there is none.

Rules (mcli's, in ``services.output.selection``, shared with the API server): the latest
resumption unless ``resumption`` or ``prev``; rank 0 unless ``rank``; ``failed`` (or no rank
on a FAILED resumption) is the first rank that failed. A
resumption that never got its GPUs has no output: "not yet scheduled" while it waits (a follow
waits for it), a pointer at ``describe run`` otherwise; a FailedImagePull resumption likely has
none either, and says so.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cli.client import Client
from cli.errors import ClientError, UsageError
from cli.models import Run
from cli.reads import fetch_run
from events.status import RunStatus
from services.output import selection

S = RunStatus
_POLL_S = 0.5


class NoLogs(ClientError):
    """There are no logs to show, for a reason the user should read (not a failure)."""

    code = 200


@dataclass(frozen=True)
class LogTarget:
    """The output to show: a resumption of a run, and its rank (None: the server picks the
    first that failed, as ``failed`` asks, else rank 0)."""

    run: Run
    attempt: int
    rank: int | None
    failed: bool = False

    @property
    def run_id(self) -> str:
        return self.run.run_uid


def check_args(rank: int | None, failed: bool, resumption: int | None, prev: bool) -> None:
    if failed and rank is not None:
        raise UsageError("--failed and --rank/--node are mutually exclusive: give one of them")
    if prev and resumption is not None:
        raise UsageError("--prev and --resumption are mutually exclusive: give one of them")
    for label, value in (("rank", rank), ("resumption", resumption)):
        if value is not None and value < 0:
            raise UsageError(f"--{label} must not be negative (got {value})")


def attempt_of(run: Run, resumption: int | None, prev: bool) -> int:
    latest = run.latest_resumption.index
    if prev:
        if latest == 0:
            raise ClientError(f"Run {run.name} has no previous resumption (it has only 0)")
        return latest - 1
    try:
        return selection.attempt_index(run.name, latest, resumption)
    except selection.NoSuchOutput as error:
        raise ClientError(str(error)) from None


def unscheduled_notice(run: Run, attempt: int) -> str | None:
    """Why a resumption has no output, or None when it may have some."""
    resumption = run.resumptions[attempt]
    if resumption.started_at is None:
        if resumption.status.is_waiting():
            return (
                f"Run {run.name} has not been scheduled yet ({resumption.status.display_name}):"
                f" its logs appear once it starts; `mcli logs {run.name} --follow` waits for them"
            )
        why = f" ({resumption.reason})" if resumption.reason else ""
        return (
            f"Run {run.name} resumption {attempt} ended {resumption.status.display_name}{why}"
            f" before it was scheduled, so it has no logs: see `mcli describe run {run.name}`"
        )
    if resumption.reason_code == "FailedImagePull":
        return (
            f"Run {run.name} failed to pull its image {run.image!r} (FailedImagePull), so there "
            f"are likely no logs: check the image with `mcli describe run {run.name}`"
        )
    return None


def choose(
    run: Run,
    *,
    rank: int | None = None,
    failed: bool = False,
    resumption: int | None = None,
    prev: bool = False,
) -> LogTarget:
    """The output to show; ``NoLogs`` (with the message to show) when there is none. The API
    server picks the rank of a ``failed`` target (``services.output.selection``) and refuses a
    rank the resumption does not have."""
    check_args(rank, failed, resumption, prev)
    attempt = attempt_of(run, resumption, prev)
    notice = unscheduled_notice(run, attempt)
    if notice is not None:
        raise NoLogs(notice)
    chosen = run.resumptions[attempt]
    known_failure = run.first_failed_rank if attempt == run.latest_resumption.index else None
    if failed and chosen.status is not S.FAILED and known_failure is None:
        raise ClientError(
            f"Run {run.name} resumption {attempt} has no failed rank "
            f"({chosen.status.display_name}): use --rank N instead of --failed"
        )
    return LogTarget(run, attempt, rank, failed=failed or chosen.status is S.FAILED)


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Whole lines of a byte stream (a character split across chunks is carried over)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    async for chunk in chunks:
        pending += decoder.decode(chunk)
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line + "\n"
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def _output(
    client: Client, target: LogTarget, tail: int | None, *, follow: bool
) -> AsyncIterator[bytes]:
    return client.output(
        target.run.name,
        target.attempt,
        target.rank,
        failed=target.failed and target.rank is None,
        tail=tail,
        follow=follow,
    )


async def read(client: Client, target: LogTarget, tail: int | None = None) -> list[str]:
    return [line async for line in _lines(_output(client, target, tail, follow=False))]


async def follow(client: Client, target: LogTarget, tail: int | None = None) -> AsyncIterator[str]:
    """The lines so far, then each new one, until the resumption is terminal."""
    async for line in _lines(_output(client, target, tail, follow=True)):
        yield line


async def wait_scheduled(client: Client, run: Run, attempt: int) -> Run:
    """Wait until the resumption got its GPUs or ended; the run as it is then."""
    while True:
        run = await fetch_run(client, run.run_uid)
        resumption = run.resumptions[attempt] if attempt < len(run.resumptions) else None
        if resumption is not None and (
            resumption.started_at is not None or resumption.status.is_terminal()
        ):
            return run
        await asyncio.sleep(_POLL_S)
