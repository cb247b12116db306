"""The seam between the container executor and whatever keeps a user's secrets
(``services.node_agent.ranksecrets``), driven in-process against a real podman and a registry
that wants a login (htpasswd): without the owner's login a private image fails with the
registry's message; with it, the image is pulled (the login in a 0600 file for the pull only,
never in argv), and the owner's env and mounted secrets reach the rank."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath

import pytest
import redis.asyncio as aioredis

from bench.podlab import MARKER, MARKER_TEXT, LabError, Podlab, busybox_tar
from events.status import RunStatus
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.node_agent.container.engine import Engine
from services.node_agent.container.executor import ContainerExecutor
from services.node_agent.container.rankdir import RankFiles
from services.node_agent.executor import RankControl
from services.node_agent.job import RankJob, job_of
from services.node_agent.ranksecrets import RankSecrets
from services.node_agent.reporter import Reporter
from services.node_agent.settings import NodeAgentSettings
from tests.integration.node_agent.harness import MiniScheduler, lines, spec
from tests.waiting import eventually

OWNER = "alice@example.com"  # who MiniScheduler submits as
LOGIN = ("puller", "s3cret-pw")


class _Provider:
    """Alice's secrets: her registry login, an env secret and a mounted one."""

    def __init__(self, lab: Podlab) -> None:
        self.lab = lab
        self.asked: list[tuple[str, str]] = []
        self.auth_file_mode: int | None = None

    async def registry_auth(self, owner: str, image: str) -> bytes | None:
        self.asked.append((owner, image))
        return self.lab.auths() if owner == OWNER else None

    async def rank_secrets(self, owner: str, into: Path) -> RankSecrets:
        key = into / "api-key"
        key.write_text("the mounted secret\n")
        key.chmod(0o600)
        return RankSecrets(
            env={"SECRET_ENV": "the env secret"},
            mounts=[(PurePosixPath("/etc/secrets/api-key"), key)],
        )


@pytest.fixture(scope="module")
def private_lab(tmp_path_factory: pytest.TempPathFactory, podlab: Podlab) -> Iterator[Podlab]:
    """A lab whose registry wants a login (``podlab`` first: it skips where podman cannot run)."""
    try:
        lab = Podlab(tmp_path_factory.mktemp("private-lab"), login=LOGIN)
    except LabError as exc:
        pytest.skip(f"containers: {exc}")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    events = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    try:
        yield events
    finally:
        await events.close()


def _executor(
    lab: Podlab, store: EventStore, data_dir: Path, provider: _Provider | None
) -> ContainerExecutor:
    settings = NodeAgentSettings(
        node="node-a", gpus=8, data_dir=data_dir, executor="container", container_conf=lab.conf
    )
    engine = Engine(conf=lab.conf)
    engine.env = dict(lab.env)
    reporter = Reporter(store, settings.node, settings.actor)
    return ContainerExecutor(settings, reporter, store.redis, secrets=provider, engine=engine)


async def _run(executor: ContainerExecutor, store: EventStore, run_id: str) -> RankJob:
    state = await store.load_run(run_id)
    assert state is not None
    job = job_of(state, state.latest, 0)
    await executor.prepare()
    executor.begin(job.key)
    await executor.run(job.key, job, RankControl(job.key), resume=False)
    return job


async def test_a_private_image_needs_its_owners_login(
    private_lab: Podlab, store: EventStore, scheduler: MiniScheduler, tmp_path: Path
) -> None:
    image = private_lab.push(busybox_tar(), "private:1")
    run_id = await scheduler.submit(spec("echo never", image=image), [("node-a", [0])])

    await _run(_executor(private_lab, store, tmp_path / "node", None), store, run_id)

    state = await scheduler.wait_status(run_id, RunStatus.FAILED)
    reason = state.latest.reason
    assert reason is not None
    assert (reason.category, reason.code) == ("user", "FailedImagePull")
    assert "authentication required" in reason.message


async def test_with_the_login_the_image_runs_with_the_owners_secrets(
    private_lab: Podlab,
    store: EventStore,
    scheduler: MiniScheduler,
    redis: aioredis.Redis,
    tmp_path: Path,
) -> None:
    image = private_lab.push(busybox_tar(), "private:2")
    command = f'cat {MARKER}; cat /etc/secrets/api-key; echo "env=$SECRET_ENV"'
    run_id = await scheduler.submit(spec(command, image=image), [("node-a", [0])])
    provider = _Provider(private_lab)

    job = await _run(_executor(private_lab, store, tmp_path / "node", provider), store, run_id)

    await scheduler.wait_status(run_id, RunStatus.COMPLETED)
    assert provider.asked == [(OWNER, image)]
    wanted = [MARKER_TEXT.encode(), b"the mounted secret", b"env=the env secret"]
    await eventually(lambda: _said(redis, run_id, wanted), what="the secrets in the output")
    files = RankFiles.of(tmp_path / "node", job.key)
    assert not files.auth_file.exists()  # for the pull only
    assert not files.secrets.exists()  # gone with the rank
    events = json.dumps([str(e) for e in await scheduler.events(run_id)])
    for secret in (LOGIN[1], "the env secret", "the mounted secret"):
        assert secret not in events
    assert LOGIN[1] not in " ".join(os.environ.values())


async def _said(redis: aioredis.Redis, run_id: str, wanted: list[bytes]) -> bool:
    found = await lines(redis, run_id)
    return all(line in found for line in wanted)
