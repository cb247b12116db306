"""A rank's STARTING work on the ``process`` executor: image, then integrations in order.

Each step is reported before and after (``image.pull_*``, ``integration.*``). The image cannot
be pulled by a process executor: its reference is checked against the OCI grammar and an
invalid one fails the rank with ``FailedImagePull`` (as Kubernetes does for
``InvalidImageName``) before any process runs. An integration that fails, fails the rank with
``IntegrationFailed`` and the last lines of the tool's stderr. The tools' output goes to the
rank's log like the command's.

A stop during setup kills the running tool (its own process group) and reports the rank's exit
with the attempt's reason; a kill (the log says the rank is over) just ends the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import redis.asyncio as aioredis
import structlog

from events import model as ev
from services.node_agent import image, integrations
from services.node_agent.environment import base_environment, with_venv
from services.node_agent.errors import (
    IntegrationError,
    RankEnded,
    SetupAborted,
    StepFailed,
)
from services.node_agent.executor import RankControl
from services.node_agent.isolation import RankUser
from services.node_agent.job import RankJob
from services.node_agent.process.rankdir import RankDir
from services.node_agent.pump import OutputPump
from services.node_agent.reporter import Reporter
from services.node_agent.setupsteps import SetupSteps
from services.node_agent.shim.cgroup import Cgroup
from services.node_agent.shim.ondisk import atomic_write, signal_group
from services.output import ingest

log = structlog.get_logger(__name__)

_POLL_S = 0.1
_TAIL_LINES = 20
_MESSAGE_MAX = 2000


class AsRank(NamedTuple):
    """Whom a setup tool runs as, and where its processes go: the rank's user, cgroup and
    home (None each: the agent's)."""

    user: RankUser | None
    cgroup: Cgroup | None
    home: Path | None


class Setup(SetupSteps):
    def __init__(self, reporter: Reporter, client: aioredis.Redis) -> None:
        self.reporter = reporter
        self.client = client
        self.python = sys.executable
        self.euid = os.geteuid()

    async def begin(
        self, job: RankJob, control: RankControl, first: Sequence[ev.AnyRunEvent] = ()
    ) -> None:
        """The setup's first append: ``first`` and the image's check. It needs nothing of the
        rank's user, home or secrets, so the executor sends it while it makes them. Raises
        ``RankEnded`` when the rank's exit was reported (the image refused, a stop), ``RankGone``
        when the log says it is over."""
        try:
            await self._image(job, control, first)
        except SetupAborted as exc:
            await self._end(job, None, reason=exc.reason)

    async def finish(
        self,
        rank_dir: RankDir,
        job: RankJob,
        control: RankControl,
        secrets: Mapping[str, str] | None = None,
        *,
        user: RankUser | None = None,
        cgroup: Cgroup | None = None,
    ) -> Path | None:
        """The rest of the setup, after ``begin``: the integrations, in order (their tools get
        ``secrets``, the variables of the owner's secrets: git's key and token). The rank's
        virtual environment if it has one. Raises as ``begin``."""
        try:
            as_rank = AsRank(user, cgroup, rank_dir.home if user is not None else None)
            return await self._integrations(rank_dir, job, control, secrets or {}, as_rank)
        except SetupAborted as exc:
            await self._end(job, None, reason=exc.reason)
        raise RankEnded

    async def _image(
        self, job: RankJob, control: RankControl, first: Sequence[ev.AnyRunEvent]
    ) -> None:
        """A process rank pulls nothing: its image is only checked, at once, so the pull's start
        and end are one append, with ``first`` (fewer appends on the way from submit to
        RUNNING)."""
        ref = job.spec.image
        started = ev.ImagePullStarted(**self._fields(job), image=ref)
        error = image.reference_error(ref)
        if error is None:
            finished = ev.ImagePullFinished(**self._fields(job), image=ref)
            await self._report(job, control, *first, started, finished)
            return
        await self._report(job, control, *first, started)
        log.info("rank.invalid_image", image=ref, error=error)
        reason = ev.Reason(category="user", code="FailedImagePull", message=error)
        failed = ev.ImagePullFailed(**self._fields(job), image=ref, error=error)
        await self._end(job, failed, reason=reason)

    async def _integrations(
        self,
        rank_dir: RankDir,
        job: RankJob,
        control: RankControl,
        secrets: Mapping[str, str],
        as_rank: AsRank,
    ) -> Path | None:
        euid = self.euid if as_rank.user is None else as_rank.user.uid
        ctx = integrations.Context(
            workspace=rank_dir.workspace, venv=rank_dir.venv, python=self.python, euid=euid
        )
        if not job.spec.integrations:
            return ctx.venv if ctx.venv.exists() else None
        pump = OutputPump(self.client, job.run_id, job.attempt, job.rank)
        pump.start()
        try:
            for index, integration in enumerate(job.spec.integrations):
                kind = integrations.integration_type(integration)
                where: dict[str, Any] = {"index": index, "integration_type": kind}
                await self._report(
                    job, control, ev.IntegrationStarted(**self._fields(job), **where)
                )
                try:
                    steps = integrations.steps_for(integration, ctx)
                    for step in steps:
                        if step.creates is None or not step.creates.exists():
                            env = self._env(job, ctx.venv, secrets, as_rank.home)
                            await self._step(rank_dir, step, env, control, pump, as_rank=as_rank)
                except (IntegrationError, StepFailed) as exc:
                    message = str(exc)[-_MESSAGE_MAX:]
                    log.info("rank.integration_failed", index=index, kind=kind, error=message)
                    reason = ev.Reason(category="user", code="IntegrationFailed", message=message)
                    failed = ev.IntegrationFailed(**self._fields(job), **where, error=message)
                    await self._end(job, failed, reason=reason)
                await self._report(
                    job, control, ev.IntegrationFinished(**self._fields(job), **where)
                )
        finally:
            await pump.close(10.0)
        return ctx.venv if ctx.venv.exists() else None

    async def _step(
        self,
        rank_dir: RankDir,
        step: integrations.Step,
        env: dict[str, str],
        control: RankControl,
        pump: OutputPump,
        *,
        as_rank: AsRank,
    ) -> None:
        self._check(control)
        log.info("rank.setup_step", argv=list(step.argv), cwd=str(step.cwd))
        user = as_rank.user
        try:
            proc = await asyncio.create_subprocess_exec(
                *step.argv, cwd=step.cwd, env=env, start_new_session=True,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                user=None if user is None else user.uid,
                group=None if user is None else user.gid,
                extra_groups=None if user is None else [],
                umask=-1 if user is None else 0o077,
            )  # fmt: skip
        except OSError as exc:
            raise StepFailed(f"{step.argv[0]} could not start: {exc}") from exc
        if as_rank.cgroup is not None:
            # At once, before the tool forks anything it could leave behind (a tool's first
            # child comes after its own start-up, far later than this).
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                as_rank.cgroup.join(proc.pid)
        # A restarted agent kills what an interrupted setup left running (``begin_setup_again``).
        atomic_write(rank_dir.setup_pid_file, b"%d" % proc.pid)
        assert proc.stdout is not None
        assert proc.stderr is not None
        tail: deque[bytes] = deque(maxlen=_TAIL_LINES)
        stdout, stderr = proc.stdout, proc.stderr

        async def finish() -> int:
            await asyncio.gather(
                pump.pipe(stdout, ingest.STDOUT), pump.pipe(stderr, ingest.STDERR, tail)
            )
            return await proc.wait()

        task = asyncio.create_task(finish())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=_POLL_S)
                self._check(control)
        finally:
            if not task.done():
                signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await task
            rank_dir.setup_pid_file.unlink(missing_ok=True)
        code = task.result()
        if code != 0:
            detail = b"\n".join(tail).decode(errors="replace").strip()
            how = f"exit code {code}" if code > 0 else f"signal {-code}"
            raise StepFailed(f"`{' '.join(step.argv[:4])}` failed ({how}): {detail}")

    def _env(
        self, job: RankJob, venv: Path, secrets: Mapping[str, str], home: Path | None
    ) -> dict[str, str]:
        env = base_environment(os.environ, home)
        env.update(job.spec.env_variables)
        env.update(secrets)
        env["GIT_TERMINAL_PROMPT"] = "0"  # a private repository fails instead of waiting
        if venv.exists():
            env.update(with_venv(env, venv))
        return env
