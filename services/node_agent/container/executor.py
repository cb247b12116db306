"""The ``container`` executor: each rank in a container of the run's image, through podman's
command line. The CLI rather than the REST API (the Docker SDK against podman's socket): a node
needs podman and nothing more, each container's monitor outlives the agent (no daemon), and the
engine's own words (a registry's message) reach the user unchanged; ``engine`` says more.

The IO edge of the component. A rank's life (``run``):
1. its files on this node (``rankdir``) are created before anything is reported (``begin``);
2. setup (``setup``): the pull (policy Always), then each integration in a container of its own;
3. the rank's run token (``services.node_agent.runtoken``) in its file, mounted read-only;
4. the command's container is run, detached (``spec``), under its monitor (conmon), which
   outlives the agent; ``rank.running`` is reported once it runs;
5. its log is followed into the ingest stream (``logs``) while ``wait`` waits for its end; then
   its state (``inspect``) says how it ended (``outcome``), the last lines are drained, and
   ``rank.exited`` is reported; the container is removed, the rank's files freed.

A stop is ``stop --time <grace>``: SIGTERM to the container's init, which passes it on to the
command, then SIGKILL after the grace period. A kill (the log says the rank is over) removes the
container at once (fencing): such a rank is never reported again.

After a restart (``prepare`` lists this agent's containers by label before ``local_ranks``):
- the command's container exists: adopted, whatever its state: a running one is followed and
  waited for as if the agent had never died, an ended one has its exit reported from
  ``inspect`` (the real exit code), if the log still waits for it; its output goes on after
  the last line sent;
- no command's container yet (setup was interrupted): the integrations' containers it left are
  removed and setup starts again from a clean workspace, at most ``MAX_SETUPS`` times, then
  ``RankLost``.

OOM: a rank's memory limit (``RUNPLANE_CONTAINER_MEMORY``) is the container's; past it the
kernel kills the command, and the engine says so (``State.OOMKilled``). Where podman 4's
monitor runs on cgroup v1 it leaves its marker in its working directory instead (``engine``):
the ``run`` is started in the rank's ``engine/`` directory and the marker is read from there.
"""

from __future__ import annotations

import asyncio
import math
import time

import redis.asyncio as aioredis
import structlog

from events import model as ev
from events.lifecycle import AttemptState, RankState
from services.node_agent import runtoken
from services.node_agent.container import cdi, naming, outcome, spec
from services.node_agent.container.engine import Engine, EngineError
from services.node_agent.container.logs import Follower
from services.node_agent.container.rankdir import OOM_MARKER, RankFiles, pending
from services.node_agent.container.setup import Setup
from services.node_agent.environment import parameters_document
from services.node_agent.errors import RankEnded, RankGone
from services.node_agent.executor import RankControl
from services.node_agent.job import RankJob, RankKey
from services.node_agent.plan import exited, rank_lost
from services.node_agent.pump import OutputPump
from services.node_agent.ranksecrets import NoSecrets, RankSecrets, SecretsProvider
from services.node_agent.reporter import Reporter, new_id
from services.node_agent.settings import NodeAgentSettings
from services.node_agent.shim.ondisk import atomic_write

log = structlog.get_logger(__name__)

MAX_SETUPS = 3
_DRAIN_S = 15.0  # output of an ended container still on its way
_MONITOR_S = 2.0  # how long an OOM marker may follow the container's end
_POLL_S = 0.05
_VANISHED = "its container disappeared before its command ended"
_NOT_STARTED = frozenset({"created", "configured"})


class ContainerExecutor:
    def __init__(
        self,
        settings: NodeAgentSettings,
        reporter: Reporter,
        client: aioredis.Redis,
        *,
        secrets: SecretsProvider | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = settings.data_path
        self.reporter = reporter
        self.client = client
        self.secrets: SecretsProvider = secrets or NoSecrets()
        self.engine = engine or Engine(
            settings.container_engine, settings.container_engine_args, settings.container_conf
        )
        self.options = spec.Options(
            node=settings.node,
            actor=settings.actor,
            network=settings.container_network,
            memory=settings.container_memory,
            python=settings.container_python,
            api_url=settings.api_url,
        )
        self.found: set[RankKey] = set()

    # --- the agent's side -------------------------------------------------------------

    async def prepare(self) -> None:
        """Whether GPUs go by CDI; this agent's containers, by label."""
        gpu_spec = cdi.find(self.settings.container_cdi_dirs)
        self.options = self.options._replace(cdi=gpu_spec is not None)
        log.info(
            "container.engine",
            engine=self.engine.binary,
            cdi=str(gpu_spec.path) if gpu_spec else None,
        )
        listed = await self.engine.containers(naming.node_filters(self.settings.node))
        self.found = {
            key
            for container in listed
            if (key := naming.key_of(container.get("Labels"))) is not None
        }

    def isolation(self) -> str:
        return "a container per rank (namespaces of its own, its own cgroup)"

    def close(self) -> None:
        """Nothing to stop: the containers run on under their monitors."""

    def local_ranks(self) -> list[RankKey]:
        return sorted(self.found | set(pending(self.data_dir)))

    def begin(self, key: RankKey) -> None:
        RankFiles.of(self.data_dir, key).create(key)

    async def run(
        self, key: RankKey, job: RankJob | None, control: RankControl, *, resume: bool
    ) -> None:
        files = RankFiles.of(self.data_dir, key)
        name = naming.container_name(key)
        with structlog.contextvars.bound_contextvars(
            run=key.run_id, attempt=key.attempt, rank=key.rank, container=name
        ):
            files.create(key)  # a container found without its files (a lost data directory)
            try:
                await _Rank(self, key, job, control, files).run(resume=resume)
            except RankEnded:
                pass
            except RankGone as exc:
                log.info("rank.gone", why=str(exc))
            await self._remove(key)
            files.mark_done()
            self.found.discard(key)
            await asyncio.to_thread(files.wipe)  # a clone or a venv: not on the event loop

    async def _remove(self, key: RankKey) -> None:
        """Remove every container of the rank (at once: SIGKILL), as far as the engine lets
        us: one left behind is found again by label after a restart."""
        try:
            listed = await self.engine.containers(naming.rank_filters(self.settings.node, key))
            names = [str(c["Names"][0]) for c in listed if c.get("Names")]
            await self.engine.remove(*names)
        except EngineError as exc:
            log.warning("container.remove_failed", error=str(exc))


class _Rank:
    """One rank, from its setup to its container's removal."""

    def __init__(
        self, executor: ContainerExecutor, key: RankKey, job: RankJob | None,
        control: RankControl, files: RankFiles,
    ) -> None:  # fmt: skip
        self.x = executor
        self.engine = executor.engine
        self.reporter = executor.reporter
        self.key = key
        self.job = job
        self.control = control
        self.files = files
        self.name = naming.container_name(key)
        self.stop_sent = False

    async def run(self, *, resume: bool) -> None:
        if resume:
            found = await self._inspect()
            if found is not None:
                if self.control.killed:
                    raise RankGone("the log says the rank is over")
                log.info("rank.adopted", status=found.status)
                await self._watch(found)
                return
            await self.x._remove(self.key)  # integrations an interrupted setup left running
            if self.control.killed:
                raise RankGone("the log says the rank is over")
            tries = self.files.begin_setup_again()
            if self.job is None or tries > MAX_SETUPS:
                await self._report_lost(f"its setup was interrupted {tries - 1} times")
                return
            log.info("rank.setup_again", tries=tries)
        job = self.job
        assert job is not None, "a new rank comes with its job"
        setup = Setup(self.engine, self.reporter, self.x.client, self.x.secrets, self.x.options)
        prepared = await setup.run(self.files, job, self.control)
        if self.control.killed:
            raise RankGone("the log says the rank is over")
        token = await self._token()
        seen = await self._start(job, prepared.image_id, prepared.secrets, token=token)
        await self._watch(seen)

    # --- starting --------------------------------------------------------------------------

    async def _token(self) -> bool:
        """The rank's run token in its file (0600); none without an API to speak to."""
        api_url = self.x.settings.api_url
        if api_url is None:
            return False
        token = await runtoken.issue(self.reporter, self.key)
        atomic_write(self.files.token, token.encode(), mode=0o600)
        return True

    async def _start(
        self, job: RankJob, image_id: str, secrets: RankSecrets, *, token: bool
    ) -> outcome.Seen:
        files = self.files
        atomic_write(files.parameters, parameters_document(job.spec.parameters))
        env = spec.env_file(spec.environment(job, self.x.options, token=token, secrets=secrets.env))
        atomic_write(files.env_file, env.text.encode(), mode=0o600)
        mounts = spec.Files(
            shared=files.shared,
            parameters=files.parameters,
            env_file=files.env_file,
            token=files.token if token else None,
            secrets=secrets.mounts,
        )
        command = spec.run_command(
            job, self.x.options, mounts, image_id=image_id, passed=list(env.passed)
        )
        try:
            done = await self.engine.call(*command, cwd=files.engine_dir, env=env.passed)
        finally:
            files.env_file.unlink(missing_ok=True)
        if done.code != 0:
            error = outcome.engine_error(done.stderr)
            if "already in use" not in error:  # else: run before a restart, or by a retry
                log.warning("rank.start_failed", error=error)
                await self._report_lost(f"its container could not start: {error}")
                raise RankEnded
        seen = await self._inspect()
        if seen is None:
            await self._report_lost(_VANISHED)
            raise RankEnded
        log.info("rank.started", pid=seen.pid, status=seen.status)
        return seen

    # --- watching ------------------------------------------------------------------------

    async def _watch(self, seen: outcome.Seen) -> None:
        """Until the container ends: report that it runs, follow its log, pass stop and kill
        on; then report how it ended."""
        if seen.status in _NOT_STARTED:  # run, and not started yet, when the agent died
            log.info("rank.start_adopted")
            await self.engine.check("start", self.name, cwd=self.files.engine_dir)
            seen = await self._inspect() or seen
        if seen.started and not seen.ended:
            await self._report_running(seen.pid)
        pump = OutputPump(self.x.client, self.key.run_id, self.key.attempt, self.key.rank)
        waiter = asyncio.ensure_future(self.engine.wait(self.name))
        follower = Follower(self.engine, self.name, pump, self.files, ended=waiter.done)
        pump.on_settled = follower.record
        pump.start()
        follower.start()
        stopper: asyncio.Task[None] | None = None
        try:
            while not waiter.done():
                if self.control.killed:
                    raise RankGone("the log says the rank is over")
                if self.control.stop_reason is not None and stopper is None:
                    stopper = asyncio.create_task(self._stop())
                self.control.changed.clear()
                changed = asyncio.ensure_future(self.control.changed.wait())
                try:
                    await asyncio.wait({waiter, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
            final = await self._inspect()
            if final is not None and not final.ended:
                final = await self._until_ended()
            await follower.drain(_DRAIN_S)
            await self._report_end(final)
        finally:
            for task in (waiter, stopper):
                if task is not None and not task.done():
                    task.cancel()
            await follower.stop()
            await pump.close(10.0)

    async def _stop(self) -> None:
        grace = math.ceil(self.x.settings.grace_period_s)
        log.info("rank.stopping", grace_s=grace)
        self.stop_sent = True
        try:
            await self.engine.stop(self.name, grace)
        except EngineError as exc:
            log.warning("rank.stop_failed", error=str(exc))

    async def _until_ended(self) -> outcome.Seen | None:
        """``wait`` answered while the container still runs (it was interrupted): its end."""
        while True:
            await self.engine.wait(self.name)
            seen = await self._inspect()
            if seen is None or seen.ended:
                return seen

    async def _inspect(self) -> outcome.Seen | None:
        found = await self.engine.inspect(self.name)
        return None if found is None else outcome.observe(found)

    async def _oom(self, seen: outcome.Seen) -> bool:
        """Whether the kernel killed the command for its memory: the engine says so, or its
        monitor left its marker (cgroup v1), at the latest once the monitor is gone."""
        marker = self.files.engine_dir / OOM_MARKER
        if seen.oom_killed or marker.exists():
            return True
        if self.x.settings.container_memory is None or seen.exit_code != 137:  # not SIGKILL
            return False
        deadline = time.monotonic() + _MONITOR_S
        # Another process writes it (the monitor, as the kernel tells it): nothing to wait on.
        while time.monotonic() < deadline and not marker.exists():  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)
        return marker.exists()

    # --- reporting -----------------------------------------------------------------------

    async def _report_running(self, pid: int | None) -> None:
        event = ev.RankRunning(**self.reporter.fields(self.key), pid=pid)
        log.info("rank.running", pid=pid)
        await self.reporter.report(self.key, lambda _a, rank: [] if rank.running else [event])

    async def _report_end(self, seen: outcome.Seen | None) -> None:
        if seen is None:
            if self.stop_sent:  # removed while it stopped: the stop's reason says why
                await self._report_exit(None, None, oom=False)
            else:
                await self._report_lost(_VANISHED)
            return
        await self._report_exit(seen, seen.pid, oom=await self._oom(seen))

    async def _report_exit(self, seen: outcome.Seen | None, pid: int | None, *, oom: bool) -> None:
        running = ev.RankRunning(**self.reporter.fields(self.key), pid=pid)
        gone_id = new_id()  # the same id on every try: a retried append is recognised
        memory = self.x.settings.container_memory
        stopping = self.stop_sent

        def build(attempt: AttemptState, rank: RankState) -> list[ev.AnyRunEvent]:
            if seen is None:
                why = attempt.reason
                code = None
            else:
                why = outcome.reason(seen, attempt, stopping=stopping, oom=oom, memory=memory)
                code = seen.exit_code
            gone = exited(
                self.key, self.reporter.node, self.reporter.actor, lambda: gone_id,
                exit_code=code, reason=why,
            )  # fmt: skip
            started = seen is not None and seen.started and not rank.running
            return [running, gone] if started else [gone]

        log.info(
            "rank.exited",
            exit_code=None if seen is None else seen.exit_code,
            oom=oom,
            stopped=stopping,
        )
        await self.reporter.report(self.key, build)

    async def _report_lost(self, message: str) -> None:
        log.warning("rank.lost", why=message)
        gone = exited(
            self.key, self.reporter.node, self.reporter.actor, new_id,
            exit_code=None, reason=rank_lost(message),
        )  # fmt: skip
        await self.reporter.report(self.key, lambda _a, _r: [gone])
