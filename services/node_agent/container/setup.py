"""A container rank's STARTING work: the pull, then each integration in a container of its own.

Each step is reported before and after (``image.pull_*``, ``integration.*``), as on every
executor.

- The pull is the engine's, every time (pull policy Always): layers the node has are not
  fetched again, so a cached image costs the manifest's round trip. Its result is the image
  ID the rank's containers run (``--pull never``). ``image.pull_finished`` carries the image's
  size and the pull's duration. A reference no registry could serve fails at once, as on the
  ``process`` executor; a pull the engine fails (a missing image, a registry that refuses, a
  name it cannot resolve) fails the rank with ``FailedImagePull`` and the engine's last line,
  which ends with the registry's own message. Registry logins, if the owner has any
  (``SecretsProvider.registry_auth``), are in a 0600 file of the rank's for the pull only.
- An integration runs its script (``services.node_agent.incontainer``) in a container of the
  run's image, attached, sharing the rank's ``/runplane``; its output goes to the rank's log;
  a failure (an exit code other than 0) fails the rank with ``IntegrationFailed`` and the last
  lines of its stderr.

A stop during setup ends the running pull or integration and reports the rank's exit with the
attempt's reason; a kill (the log says the rank is over) just ends the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as aioredis
import structlog

from events import model as ev
from services.node_agent import image, integrations
from services.node_agent.container import naming, spec
from services.node_agent.container.engine import Engine
from services.node_agent.container.outcome import engine_error
from services.node_agent.container.rankdir import RankFiles
from services.node_agent.errors import SetupAborted
from services.node_agent.executor import RankControl
from services.node_agent.incontainer import BadIntegration
from services.node_agent.job import RankJob
from services.node_agent.pump import OutputPump
from services.node_agent.ranksecrets import RankSecrets, SecretsProvider
from services.node_agent.reporter import Reporter
from services.node_agent.setupsteps import SetupSteps
from services.node_agent.shim.ondisk import atomic_write
from services.output import ingest

log = structlog.get_logger(__name__)

T = TypeVar("T")
_TAIL_LINES = 20
_MESSAGE_MAX = 2000


class Prepared(NamedTuple):
    image_id: str
    secrets: RankSecrets


class Setup(SetupSteps):
    def __init__(
        self,
        engine: Engine,
        reporter: Reporter,
        client: aioredis.Redis,
        secrets: SecretsProvider,
        options: spec.Options,
    ) -> None:
        self.engine = engine
        self.reporter = reporter
        self.client = client
        self.secrets = secrets
        self.options = options

    async def run(self, files: RankFiles, job: RankJob, control: RankControl) -> Prepared:
        """Pull and carry out the integrations. Raises ``RankEnded`` when the rank's exit was
        reported, ``RankGone`` when the log says it is over."""
        try:
            image_id = await self._pull(files, job, control)
            secrets = await self.secrets.rank_secrets(job.owner, files.secrets)
            await self._integrations(files, job, control, image_id, secrets)
        except SetupAborted as exc:
            await self._end(job, None, reason=exc.reason)
        return Prepared(image_id, secrets)

    # --- the image -----------------------------------------------------------------------

    async def _pull(self, files: RankFiles, job: RankJob, control: RankControl) -> str:
        ref = job.spec.image
        await self._report(job, control, ev.ImagePullStarted(**self._fields(job), image=ref))
        error = image.reference_error(ref)
        if error is not None:
            log.info("rank.invalid_image", image=ref, error=error)
            await self._pull_failed(job, error)
        auth = await self.secrets.registry_auth(job.owner, ref)
        command = ["pull", "--quiet"]
        if auth is not None:
            atomic_write(files.auth_file, auth, mode=0o600)
            command += ["--authfile", str(files.auth_file)]
        began = time.monotonic()
        try:
            done = await self._until_stopped(
                self.engine.spawn(*command, image.normalized(ref), cwd=files.engine_dir), control
            )
        finally:
            files.auth_file.unlink(missing_ok=True)
        duration_ms = round((time.monotonic() - began) * 1000)
        code, stdout, stderr = done
        if code != 0:
            error = engine_error(stderr)
            log.info("rank.pull_failed", image=ref, error=error)
            await self._pull_failed(job, error)
        image_id = stdout.decode().strip().splitlines()[-1]
        size = await self.engine.image_size(image_id)
        log.info("rank.pulled", image=ref, id=image_id, size=size, duration_ms=duration_ms)
        finished = ev.ImagePullFinished(
            **self._fields(job), image=ref, size_bytes=size, duration_ms=duration_ms
        )
        await self._report(job, control, finished)
        return image_id

    async def _pull_failed(self, job: RankJob, error: str) -> None:
        reason = ev.Reason(category="user", code="FailedImagePull", message=error)
        failed = ev.ImagePullFailed(**self._fields(job), image=job.spec.image, error=error)
        await self._end(job, failed, reason=reason)

    # --- integrations ----------------------------------------------------------------------

    async def _integrations(
        self,
        files: RankFiles,
        job: RankJob,
        control: RankControl,
        image_id: str,
        secrets: RankSecrets,
    ) -> None:
        if not job.spec.integrations:
            return
        env = spec.env_file(spec.integration_environment(job, secrets.env))
        atomic_write(files.env_file, env.text.encode(), mode=0o600)
        mounts = spec.Files(
            shared=files.shared,
            parameters=files.parameters,
            env_file=files.env_file,
            secrets=secrets.mounts,
        )
        pump = OutputPump(self.client, job.run_id, job.attempt, job.rank)
        pump.start()
        try:
            for index, integration in enumerate(job.spec.integrations):
                kind = integrations.integration_type(integration)
                where: dict[str, Any] = {"index": index, "integration_type": kind}
                started = ev.IntegrationStarted(**self._fields(job), **where)
                await self._report(job, control, started)
                try:
                    command = spec.integration_command(
                        job, self.options, mounts, image_id=image_id, index=index,
                        passed=list(env.passed),
                    )  # fmt: skip
                    await self._integration(
                        job, control, files, index=index, command=command, env=env.passed,
                        pump=pump,
                    )  # fmt: skip
                except BadIntegration as exc:
                    message = str(exc)[-_MESSAGE_MAX:]
                    log.info("rank.integration_failed", index=index, kind=kind, error=message)
                    reason = ev.Reason(category="user", code="IntegrationFailed", message=message)
                    failed = ev.IntegrationFailed(**self._fields(job), **where, error=message)
                    await self._end(job, failed, reason=reason)
                finished = ev.IntegrationFinished(**self._fields(job), **where)
                await self._report(job, control, finished)
        finally:
            files.env_file.unlink(missing_ok=True)
            await pump.close(10.0)

    async def _integration(
        self,
        job: RankJob,
        control: RankControl,
        files: RankFiles,
        *,
        index: int,
        command: list[str],
        env: dict[str, str],
        pump: OutputPump,
    ) -> None:
        name = naming.integration_name(job.key, index)
        log.info("rank.integration", index=index, container=name)
        proc = await self.engine.spawn(*command, cwd=files.engine_dir, env=env)
        assert proc.stdout is not None
        assert proc.stderr is not None
        tail: deque[bytes] = deque(maxlen=_TAIL_LINES)
        stdout, stderr = proc.stdout, proc.stderr

        async def finish() -> int:
            await asyncio.gather(
                pump.pipe(stdout, ingest.STDOUT), pump.pipe(stderr, ingest.STDERR, tail)
            )
            return await proc.wait()

        try:
            code = await self._watch(asyncio.ensure_future(finish()), control)
        finally:
            if proc.returncode is None:
                await self.engine.remove(name)  # the client's end would leave the container
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if code != 0:
            detail = b"\n".join(tail).decode(errors="replace").strip()
            raise BadIntegration(
                index,
                integrations.integration_type(job.spec.integrations[index]),
                f"integration {index} failed (exit code {code}): {detail}",
            )

    # --- shared ------------------------------------------------------------------------------

    async def _until_stopped(self, spawning: Any, control: RankControl) -> tuple[int, bytes, bytes]:
        """Run a spawned engine call to its end unless the rank is stopped or killed first."""
        proc: asyncio.subprocess.Process = await spawning

        async def finish() -> tuple[int, bytes, bytes]:
            out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, out, err

        try:
            return await self._watch(asyncio.ensure_future(finish()), control)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def _watch(self, work: asyncio.Future[T], control: RankControl) -> T:
        """``work``'s result, unless a stop or a kill comes first (it is cancelled then)."""
        try:
            while not work.done():
                self._check(control)
                control.changed.clear()
                changed = asyncio.ensure_future(control.changed.wait())
                try:
                    either: set[asyncio.Future[Any]] = {work, changed}
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
            return work.result()
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
