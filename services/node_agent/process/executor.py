"""The ``process`` executor: each rank's command runs under its own shim on this machine.

A rank's life: its directory is created (``begin``), the run owner's secrets are read and their
files written under it (``services.node_agent.secrets``: 0600, the variables naming where they
are; a rank whose secrets cannot be opened fails, ``SecretsUnavailable``, before anything runs),
setup runs in the agent (``setup``, its tools with git's key and token; its first append, the
run token's hash and the image's check, is sent while the rank's user, home and secrets are
made, so that its round trip to the log is not one more step before RUNNING), then
the shim is forked, in a session of its own, by the agent's fork server (``forkserver``: no
interpreter start per rank) and holds the rank's lock (``rankdir``). The shim
tells the agent through a pipe when the command runs (``rank.running``) and, by closing it,
when it is gone; the agent then reports ``rank.exited`` from the shim's ``exit.json``. Nothing
is polled while the agent lives. Stop and kill are signals to the shim (SIGTERM: stop with the
grace period; SIGUSR1: kill now).

After a restart (``resume``), from the rank's directory, without inventing anything:
- ``exit.json`` present: its exit is reported (the real exit code), if the log still waits;
- the shim alive: adopted, watched as if the agent had never died;
- the shim launched, dead, no ``exit.json``: whatever is left of the command is killed and
  the rank is reported lost (``RankLost``, a system failure);
- setup interrupted (no shim yet): setup starts again from a clean workspace, at most
  ``MAX_SETUPS`` times, then ``RankLost``.
A rank the log says is over is killed, never reported again.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sys
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import redis.asyncio as aioredis
import structlog

from events.lifecycle import AttemptState, RankState
from events.model import AnyRunEvent, RankRunning, Reason, RunTokenIssued
from services.core import timeouts
from services.core.aio import first_of
from services.core.sealing import KeyringFile
from services.core.secretstore import SecretValues
from services.node_agent import isolation, runtoken
from services.node_agent.environment import parameters_document, rank_environment
from services.node_agent.errors import IsolationError, RankEnded, RankGone
from services.node_agent.executor import RankControl
from services.node_agent.isolation import Homes, RankUser, parse_uid_range
from services.node_agent.job import ExitStatus, RankJob, RankKey
from services.node_agent.plan import exit_reason, exited, rank_lost
from services.node_agent.process.rankdir import RankDir, ShimSpec, ended_ranks, local_ranks
from services.node_agent.process.setup import Setup
from services.node_agent.reporter import Reporter, new_id
from services.node_agent.secrets import SecretsUnavailable, run_secrets, write_files
from services.node_agent.settings import NodeAgentSettings
from services.node_agent.shim.cgroup import Cgroup
from services.node_agent.shim.forkserver import ForkServer
from services.node_agent.shim.ondisk import atomic_write, kill_group, signal_process
from services.output import ingest

log = structlog.get_logger(__name__)

MAX_SETUPS = 3
_POLL_ADOPTED_S = 0.1  # an adopted shim has no pipe to this agent: its files are polled
SIGTERM_STOP, SIGKILL_NOW = signal.SIGTERM, signal.SIGUSR1  # what the shim takes them for
_SHIM_LOST = "the rank's supervisor (shim) died without recording how the command ended"


class ProcessExecutor:
    #: Every rank of a local stack runs on this machine; rank 0 listens on loopback.
    master_addr = "127.0.0.1"

    def __init__(self, settings: NodeAgentSettings, reporter: Reporter, client: aioredis.Redis):
        self.settings = settings
        self.data_dir = settings.data_path
        self.reporter = reporter
        self.isolated = isolation.probe(
            settings.rank_users, parse_uid_range(settings.rank_uids), settings.cgroup_parent
        )
        self.homes = Homes(settings.homes_path, self.isolated)
        self.setup = Setup(reporter, client)
        self.forks = ForkServer(settings.data_path / "forkserver.log")
        self.values = SecretValues(client)
        keyring = settings.secrets_keyring_file
        self.keyring = None if keyring is None else KeyringFile(keyring)

    async def prepare(self) -> None:
        """Nothing to learn (the ranks' directories say it all). With ranks as their own
        users, the agent's files become its own alone (umask 077, its data directory 0700).
        The homes of ranks that ended while no agent watched go. The fork server starts now,
        so the first rank placed here does not wait for its imports."""
        if self.isolated.users:
            if (problem := isolation.traversable(self.homes.root)) is not None:
                raise IsolationError(problem)
            os.umask(0o077)  # everything the agent, its fork server and its shims write
            self.data_dir.chmod(0o700)
            log.info("agent.isolation", isolation=self.isolation())
            if (why := isolation.runnable_by_ranks(sys.executable)) is not None:
                log.warning(
                    "agent.python_out_of_reach",
                    why=why,
                    what="ranks cannot create virtual environments (pip_packages) with it, "
                    "nor run it: install Python where every user can run it",
                )
        else:
            log.warning("agent.isolation", isolation=self.isolation())
        for rank_dir in ended_ranks(self.data_dir):
            await asyncio.to_thread(rank_dir.discard)
        try:
            self.forks.start()
        except OSError as exc:  # each launch tries again, and fails its rank if it cannot
            log.warning("forkserver.start_failed", error=repr(exc))

    def local_ranks(self) -> list[RankKey]:
        return [rank_dir.key for rank_dir in local_ranks(self.data_dir)]

    def isolation(self) -> str:
        return self.isolated.describe()

    def close(self) -> None:
        """The fork server ends; the shims it forked run on."""
        self.forks.close()

    def begin(self, key: RankKey) -> None:
        RankDir.of(self.data_dir, key, self.homes.root).create(key)

    async def run(
        self, key: RankKey, job: RankJob | None, control: RankControl, *, resume: bool
    ) -> None:
        rank_dir = RankDir.of(self.data_dir, key, self.homes.root)
        with structlog.contextvars.bound_contextvars(
            run=key.run_id, attempt=key.attempt, rank=key.rank
        ):
            try:
                await self._run(rank_dir, key, job, control, resume=resume)
            except RankEnded:
                pass
            except RankGone as exc:
                log.info("rank.gone", why=str(exc))
                self._kill(rank_dir)
            # Its cgroup, a clone, a venv: not on the loop. The thread runs to its end even
            # if this task is cancelled meanwhile.
            await asyncio.to_thread(_finish, rank_dir)

    async def _run(
        self,
        rank_dir: RankDir,
        key: RankKey,
        job: RankJob | None,
        control: RankControl,
        *,
        resume: bool,
    ) -> None:
        if resume:
            status = rank_dir.exit_status()
            if status is not None:
                log.info("rank.found_exited", exit_code=status.exit_code, signal=status.signal)
                await self._report_exit(rank_dir, key, status)
                return
            if rank_dir.launched():
                log.info("rank.adopted", shim_alive=rank_dir.shim_alive())
                await self._watch(rank_dir, key, control, None)
                return
            if control.killed:
                raise RankGone("the log says the rank is over")
            tries = rank_dir.begin_setup_again()
            if job is None or tries > MAX_SETUPS:
                await self._report_lost(key, f"its setup was interrupted {tries - 1} times")
                return
            log.info("rank.setup_again", tries=tries)
        assert job is not None, "a new rank comes with its job"
        set_up = await self._set_up(rank_dir, key, job, control)
        if set_up is None:
            return
        try:
            link = self._launch(rank_dir, job, *set_up)
        except OSError as exc:
            log.exception("rank.launch_failed")
            kill_group(rank_dir.command_pid())
            await self._report_lost(key, f"its supervisor could not start: {exc}")
            return
        try:
            await self._watch(rank_dir, key, control, link)
        finally:
            link.close()

    async def _set_up(
        self, rank_dir: RankDir, key: RankKey, job: RankJob, control: RankControl
    ) -> tuple[Path | None, _Prepared] | None:
        """The rank's setup: its virtual environment (if any) and what its shim needs; None
        once the rank's end is reported.

        The setup's first append (the run token's hash, the image's check) goes at once: its
        round trip to the log runs while the rank's user, home, cgroup and secrets are made,
        which it needs none of. Nothing of the rank runs before both are done."""
        issued, token = self._draw(key)
        first = asyncio.create_task(self.setup.begin(job, control, issued), name="setup-first")
        try:
            prepared = await self._prepare(rank_dir, key, job, token)
        except BaseException:
            first.cancel()
            await asyncio.wait({first})
            raise
        await first  # RankEnded: the image was refused and the rank's end reported
        if isinstance(prepared, _Refused):
            await self._report_failed(key, prepared.code, prepared.message)
            return None
        venv = await self.setup.finish(
            rank_dir, job, control, prepared.secrets, user=prepared.user, cgroup=prepared.cgroup
        )
        return venv, prepared

    def _user(self, rank_dir: RankDir, key: RankKey, job: RankJob) -> RankUser | None:
        """Whom the rank runs as (recorded: a setup that begins again keeps it); its home is
        created, root's, on the way. In a worker thread: the homes' lock is the machine's,
        held by every agent of it for each new and each finished run, and a wait for it must
        not stop this agent's other ranks."""
        record = rank_dir.record()
        if record.user is not None:
            return record.user
        user = self.homes.open(rank_dir.home, key.run_id, job.owner)
        if user is not None:
            rank_dir.update(uid=user.uid, gid=user.gid)
            log.info("rank.user", uid=user.uid)
        return user

    def _cgroup(self, rank_dir: RankDir, key: RankKey) -> Cgroup | None:
        """The rank's cgroup (recorded), created; None where the node makes none."""
        if (recorded := rank_dir.record().cgroup) is not None:
            cgroup = Cgroup(recorded)
        elif (parent := self.isolated.cgroup_parent) is not None:
            cgroup = Cgroup.for_rank(parent, *key)
            rank_dir.update(cgroup=str(cgroup.path))
        else:
            return None
        try:
            cgroup.create()
        except OSError as exc:  # the parent went away since the start, say
            log.warning("rank.no_cgroup", cgroup=str(cgroup.path), error=exc.strerror)
            rank_dir.update(cgroup=None)
            return None
        return cgroup

    async def _report_failed(self, key: RankKey, code: str, message: str) -> None:
        log.warning("rank.failed_to_start", code=code, error=message)
        reason = Reason(category="system", code=code, message=message)
        gone = exited(
            key, self.reporter.node, self.reporter.actor, new_id, exit_code=None, reason=reason
        )
        await self.reporter.report(key, lambda _a, _r: [gone])

    async def _prepare(
        self, rank_dir: RankDir, key: RankKey, job: RankJob, token: str | None
    ) -> _Prepared | _Refused:
        """The rank's user, cgroup, home (its secrets' files, its run token's file, its
        parameters), given to the user; or why the rank cannot start."""
        try:
            found = await run_secrets(self.values, job.owner, self.keyring)
        except SecretsUnavailable as exc:
            return _Refused("SecretsUnavailable", str(exc))
        if found:
            log.info("rank.secrets", owner=job.owner, names=found.names)  # names, never values
        secrets_root = PurePosixPath(rank_dir.secrets_dir)
        parameters = parameters_document(job.spec.parameters)

        def home() -> tuple[RankUser | None, Cgroup | None]:
            """The user, the cgroup, and the home: root's alone until ``give`` (nothing of the
            rank runs yet, nothing can be planted). One trip to a worker thread for all of it:
            the homes' lock may wait, and a cgroup's ``mkdir`` alone may take milliseconds."""
            user = self._user(rank_dir, key, job)
            cgroup = self._cgroup(rank_dir, key)
            rank_dir.new_home()
            write_files(found, secrets_root)
            if token is not None:
                atomic_write(rank_dir.token_file, token.encode(), mode=0o600)
            atomic_write(rank_dir.workspace / "parameters.yaml", parameters)
            rank_dir.give(user)
            return user, cgroup

        try:
            user, cgroup = await asyncio.to_thread(home)
        except IsolationError as exc:
            return _Refused("NoRankUser", str(exc))
        secret_env = found.environment(secrets_root, scratch=PurePosixPath(rank_dir.root))
        return _Prepared(user, cgroup, secret_env, self._platform(rank_dir, token))

    def _draw(self, key: RankKey) -> tuple[tuple[RunTokenIssued, ...], str | None]:
        """The rank's run token and the event that puts its hash on the log, which the
        setup's first append carries (before the command starts: ``runtoken``); none
        without an API to speak to (``api_url``)."""
        if self.settings.api_url is None:
            return (), None
        issued, token = runtoken.draw(self.reporter, key)
        return (issued,), token

    def _platform(self, rank_dir: RankDir, token: str | None) -> dict[str, str]:
        """The variables that name the run token's file (0600, written with the home)."""
        if token is None or self.settings.api_url is None:
            return {}
        return runtoken.platform_environment(self.settings.api_url, rank_dir.token_file)

    def _launch(
        self, rank_dir: RankDir, job: RankJob, venv: Path | None, prepared: _Prepared
    ) -> ShimLink:
        user, cgroup, secret_env, platform = prepared
        env = rank_environment(
            job,
            base=os.environ,
            master_addr=self.master_addr,
            parameters_path=rank_dir.workspace / "parameters.yaml",
            venv=venv,
            platform=platform,
            secrets=secret_env,
            home=None if user is None else rank_dir.home,
        )
        fence_timeout_s, fence_grace_s = self.settings.fence_s
        rank_dir.write_spec(
            ShimSpec(
                run_id=job.run_id,
                attempt=job.attempt,
                rank=job.rank,
                command=job.spec.command,
                cwd=str(rank_dir.workspace),
                env=env,
                redis_url=self.settings.redis_url,
                uid=None if user is None else user.uid,
                gid=None if user is None else user.gid,
                cgroup=None if cgroup is None else str(cgroup.path),
                redis_username=self.settings.redis_username,
                replicas=self.settings.append_replicas,
                replica_timeout_ms=self.settings.append_replica_timeout_ms,
                redis_password_file=(
                    None
                    if self.settings.redis_password_file is None
                    else str(self.settings.redis_password_file)
                ),
                grace_period_s=self.settings.grace_period_s,
                lease_file=str(self.settings.lease_path),
                fence_timeout_s=fence_timeout_s,
                fence_grace_s=fence_grace_s,
                fence_poll_s=timeouts.fence_poll_s(fence_timeout_s),
                max_lines=self.settings.output_buffer_lines,
                max_line=ingest.MAX_LINE,
            )
        )
        heard, told = os.pipe()
        lock = os.open(rank_dir.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the shim inherits it at fork: held from then on
            pid = self.forks.spawn(rank_dir.root, lock, told)
        except OSError:
            os.close(heard)
            raise
        finally:
            os.close(lock)
            os.close(told)
        log.info("rank.launched", shim=pid)
        return ShimLink(heard)

    async def _watch(
        self, rank_dir: RankDir, key: RankKey, control: RankControl, link: ShimLink | None
    ) -> None:
        """Until the shim ends: report the command's start, pass stop and kill on; then report
        how it ended. A shim this agent started tells it (``ShimLink``); an adopted one is
        watched through its files."""
        running_reported = False
        sent: set[int] = set()
        while True:
            if link is not None:
                alive, pid = not link.ended, link.pid or rank_dir.command_pid()
            else:
                alive, pid = rank_dir.shim_alive(), rank_dir.command_pid()
            if pid is not None and not running_reported:
                await self._report_running(key, pid)
                running_reported = True
            if not alive:
                break
            wants = SIGKILL_NOW if control.killed else SIGTERM_STOP if control.stop_reason else None
            # shim.pid is written once the shim can take signals; until then, wait.
            if wants is not None and wants not in sent and (shim := rank_dir.shim_pid()):
                signal_process(shim, wants)
                sent.add(wants)
            control.changed.clear()
            events = [control.changed] + ([link.heard] if link is not None else [])
            await first_of(events, within=None if link is not None else _POLL_ADOPTED_S)
            if link is not None:
                link.heard.clear()
        status = rank_dir.exit_status()
        if status is None:
            kill_group(rank_dir.command_pid())
            await self._report_lost(key, _SHIM_LOST)
            return
        await self._report_exit(rank_dir, key, status)

    async def _report_running(self, key: RankKey, pid: int) -> None:
        event = RankRunning(**self.reporter.fields(key), pid=pid)
        log.info("rank.running", pid=pid)
        await self.reporter.report(key, lambda _a, rank: [] if rank.running else [event])

    async def _report_exit(self, rank_dir: RankDir, key: RankKey, status: ExitStatus) -> None:
        pid = rank_dir.command_pid()
        running = RankRunning(**self.reporter.fields(key), pid=pid)
        gone_id = new_id()  # the same id on every try: a retried append is recognised

        def build(attempt: AttemptState, rank: RankState) -> list[AnyRunEvent]:
            reason = exit_reason(status, attempt)
            gone = exited(
                key, self.reporter.node, self.reporter.actor, lambda: gone_id,
                exit_code=status.exit_code, signal=status.signal, reason=reason,
            )  # fmt: skip
            started = pid is not None and status.error is None and not rank.running
            return [running, gone] if started else [gone]

        log.info(
            "rank.exited",
            exit_code=status.exit_code,
            signal=status.signal,
            stopped=status.stopped,
            lines=status.lines,
            dropped=status.dropped,
        )
        await self.reporter.report(key, build)

    async def _report_lost(self, key: RankKey, message: str) -> None:
        log.warning("rank.lost", why=message)
        gone = exited(
            key, self.reporter.node, self.reporter.actor, new_id,
            exit_code=None, reason=rank_lost(message),
        )  # fmt: skip
        await self.reporter.report(key, lambda _a, _r: [gone])

    def _kill(self, rank_dir: RankDir) -> None:
        """End whatever runs of a rank the log says is over."""
        shim_pid = rank_dir.shim_pid()
        if rank_dir.shim_alive() and shim_pid is not None:
            signal_process(shim_pid, signal.SIGUSR1)
        elif rank_dir.exit_status() is None:
            kill_group(rank_dir.command_pid())


def _finish(rank_dir: RankDir) -> None:
    rank_dir.mark_done()
    rank_dir.discard()


class _Prepared(NamedTuple):
    user: RankUser | None
    cgroup: Cgroup | None
    secrets: dict[str, str]
    platform: dict[str, str]


class _Refused(NamedTuple):
    """Why a rank cannot start (a system failure of the rank: ``code`` and ``message``)."""

    code: str
    message: str


class ShimLink:
    """What a shim tells the agent that started it, through a pipe: ``running <pid>`` when the
    command runs, then the end of the pipe when the shim is gone, however it went."""

    def __init__(self, fd: int) -> None:
        self.pid: int | None = None
        self.ended = False
        self.heard = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(fd), name="shim-link")

    def close(self) -> None:
        self._listener.cancel()

    async def _listen(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while line := await reader.readline():
                word, _, value = line.strip().partition(b" ")
                if word == b"running" and value.isdigit():
                    self.pid = int(value)
                self.heard.set()
        finally:
            transport.close()
            self.ended = True
            self.heard.set()
