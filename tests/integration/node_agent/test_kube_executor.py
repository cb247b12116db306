"""The kubernetes executor against a stand-in API server and the real event store: a rank's
Pod moved through recorded states gives the scheduler the process executor's events; a stop
deletes the Pod with the grace period; a restarted agent adopts the Pod it finds."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from events.model import RankExited, UserAdded
from events.secrets import Secret
from events.status import RunStatus
from services.api.vault import Vault
from services.core import sealing
from services.core.client import connect
from services.core.sealing import KeyringFile
from services.core.settings import Settings
from services.core.store import EventStore
from services.node_agent.executor import RankControl
from services.node_agent.job import RankJob, RankKey, job_of
from services.node_agent.kube import manifests, naming
from services.node_agent.kube.api import KubeApi
from services.node_agent.kube.executor import KubeExecutor
from services.node_agent.reporter import Reporter
from services.node_agent.settings import NodeAgentSettings
from tests.integration.node_agent.fake_cluster import FakeCluster
from tests.integration.node_agent.harness import MiniScheduler, ingest, spec
from tests.waiting import eventually

PIP = {"integration_type": "pip_packages", "packages": ["einops"]}
ALICE = "alice@example.com"  # the harness submits as her


@pytest.fixture
async def scheduler(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[MiniScheduler]:
    async with MiniScheduler(redis_url) as mini:
        yield mini


@pytest.fixture
async def store(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[EventStore]:
    events = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    yield events
    await events.close()


def make_executor(
    store: EventStore, cluster: FakeCluster, data_dir: Path, keyring: Path | None = None
) -> KubeExecutor:
    settings = NodeAgentSettings(
        node="node-a", gpus=8, gpu_type="a100_80gb", data_dir=data_dir,
        executor="kubernetes", kube_namespace="ml", grace_period_s=20,
        secrets_keyring_file=keyring,
    )  # fmt: skip
    reporter = Reporter(store, settings.node, settings.actor)
    api: Any = cluster  # the stand-in answers KubeApi's calls
    executor = KubeExecutor(settings, reporter, store.redis, api=api)
    assert isinstance(executor.api, KubeApi | FakeCluster)
    return executor


async def placed(scheduler: MiniScheduler, **fields: Any) -> tuple[RankJob, str]:
    run_id = await scheduler.submit(
        spec("python train.py", integrations=[PIP], **fields), [("node-a", [0, 1])]
    )
    state = await scheduler.state(run_id)
    return job_of(state, state.latest, 0), run_id


async def types(scheduler: MiniScheduler, run_id: str) -> list[str]:
    return [type(e).__name__ for e in await scheduler.events(run_id)]


async def test_a_pod_through_its_life_reports_the_process_executors_events(
    scheduler: MiniScheduler, store: EventStore, redis: aioredis.Redis, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    executor = make_executor(store, cluster, tmp_path)
    await executor.prepare()
    job, run_id = await placed(scheduler)
    name = naming.pod_name(job.key)
    cluster.logs[(name, "integration-0")] = [
        b"2025-05-14T09:13:00.1Z Successfully installed einops\n"
    ]
    cluster.logs[(name, "rank")] = [b"2025-05-14T09:14:10.5Z step 1 loss 2.3\n2025-05-14T09:14:1",
                                    b"1Z step 2 loss 2.1\n"]  # fmt: skip
    executor.begin(job.key)
    task = asyncio.create_task(executor.run(job.key, job, RankControl(job.key), resume=False))
    await eventually(lambda: name in cluster.pods, what="the Pod created")
    for case in ("container-creating", "integration-running", "running"):
        cluster.move(name, case)
    await scheduler.wait_status(run_id, RunStatus.RUNNING)
    cluster.move(name, "succeeded-exit-0")
    await scheduler.wait_status(run_id, RunStatus.COMPLETED)
    await asyncio.wait_for(task, 30)
    assert await types(scheduler, run_id) == [
        "RunSubmitted", "AttemptQueued", "AttemptScheduled",
        "ImagePullStarted", "ImagePullFinished", "IntegrationStarted", "IntegrationFinished",
        "RankRunning", "AttemptRunning", "RankExited", "AttemptTerminating", "AttemptCompleted",
    ]  # fmt: skip
    lines = [entry[b"l"] for entry in await ingest(redis, run_id)]
    assert lines == [b"Successfully installed einops", b"step 1 loss 2.3", b"step 2 loss 2.1"]
    assert [s["metadata"]["name"] for s in cluster.services] == [naming.service_name(run_id, 0)]
    assert cluster.deleted == [(name, None)]  # over: its Pod goes
    assert executor.local_ranks() == []


async def test_a_stop_deletes_the_pod_with_the_grace_period(
    scheduler: MiniScheduler, store: EventStore, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    executor = make_executor(store, cluster, tmp_path)
    await executor.prepare()
    job, run_id = await placed(scheduler)
    name = naming.pod_name(job.key)
    control = RankControl(job.key)
    executor.begin(job.key)
    task = asyncio.create_task(executor.run(job.key, job, control, resume=False))
    await eventually(lambda: name in cluster.pods, what="the Pod created")
    cluster.move(name, "running")
    await scheduler.wait_status(run_id, RunStatus.RUNNING)
    await scheduler.stop(run_id)
    state = await scheduler.wait_status(run_id, RunStatus.TERMINATING)
    assert state.latest.reason is not None
    control.stop(state.latest.reason)
    await eventually(lambda: cluster.deleted, what="the Pod deleted")
    assert cluster.deleted == [(name, None)]  # None: the Pod's own grace period
    assert cluster.pods[name]["spec"]["terminationGracePeriodSeconds"] == 20
    cluster.remove(name)  # SIGTERM, the command ended, the kubelet removed it
    state = await scheduler.wait_status(run_id, RunStatus.STOPPED)
    await asyncio.wait_for(task, 30)
    (exit_event,) = [e for e in await scheduler.events(run_id) if isinstance(e, RankExited)]
    assert exit_event.reason is not None
    assert exit_event.reason.category == "stopped"


async def test_a_restarted_agent_adopts_its_pod_instead_of_creating_another(
    scheduler: MiniScheduler, store: EventStore, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    job, run_id = await placed(scheduler)
    name = naming.pod_name(job.key)
    first = make_executor(store, cluster, tmp_path)
    cluster.add(manifests.pod(job, first.options), "running")  # the last life created it
    executor = make_executor(store, cluster, tmp_path / "wiped")  # its disk did not survive
    await executor.prepare()
    assert executor.local_ranks() == [RankKey(run_id, 0, 0)]
    task = asyncio.create_task(executor.run(job.key, job, RankControl(job.key), resume=True))
    await scheduler.wait_status(run_id, RunStatus.RUNNING)
    cluster.move(name, "failed-exit-3")
    state = await scheduler.wait_status(run_id, RunStatus.FAILED)
    await asyncio.wait_for(task, 30)
    assert cluster.created == []  # adopted, never duplicated
    assert state.latest.reason is not None
    assert (state.latest.reason.code, state.latest.reason.exit_code) == ("Error", 3)


async def test_the_owners_secrets_become_secrets_of_the_pod_and_its_pull_secret(
    scheduler: MiniScheduler, store: EventStore, tmp_path: Path
) -> None:
    keyring = sealing.provision(tmp_path / "keys")
    vault = Vault(store, KeyringFile(keyring))
    await store.append(
        [UserAdded(id="u1", actor="setup", user=ALICE, role="user")], expected_version=0
    )
    await vault.create(ALICE, ALICE, Secret(
        name="reg", secret_type="docker", metadata={},
        value={"server": "reg.example:5000", "username": "u", "password": "reg-value-7"},
    ))  # fmt: skip
    await vault.create(ALICE, ALICE, Secret(
        name="tok", secret_type="env", metadata={"key": "API_TOKEN"},
        value={"value": "tok-value-8"},
    ))  # fmt: skip
    cluster = FakeCluster()
    executor = make_executor(store, cluster, tmp_path / "agent", keyring)
    await executor.prepare()
    job, run_id = await placed(scheduler, image="reg.example:5000/team/trainer:1")
    name = naming.pod_name(job.key)
    executor.begin(job.key)
    task = asyncio.create_task(executor.run(job.key, job, RankControl(job.key), resume=False))
    await eventually(lambda: len(cluster.secrets) == 2, what="the Pod's two Secrets")
    pod = cluster.pods[name]
    assert pod["spec"]["imagePullSecrets"] == [{"name": f"{name}-pull"}]
    assert "tok-value-8" not in json.dumps(pod)
    assert "reg-value-7" not in json.dumps(pod)
    for secret in cluster.secrets.values():
        (owner,) = secret["metadata"]["ownerReferences"]
        assert owner["uid"] == f"uid-{name}"
    pull = cluster.secrets[f"{name}-pull"]
    auths = json.loads(base64.b64decode(pull["data"][".dockerconfigjson"]))["auths"]
    assert list(auths) == ["reg.example:5000"]
    opaque = cluster.secrets[f"{name}-secrets"]
    assert base64.b64decode(opaque["data"]["env.API_TOKEN"]) == b"tok-value-8"
    cluster.move(name, "running")
    await scheduler.wait_status(run_id, RunStatus.RUNNING)
    cluster.move(name, "succeeded-exit-0")
    await scheduler.wait_status(run_id, RunStatus.COMPLETED)
    await asyncio.wait_for(task, 30)


async def test_secrets_that_do_not_open_fail_the_rank_before_its_pod(
    scheduler: MiniScheduler, store: EventStore, tmp_path: Path
) -> None:
    keyring = sealing.provision(tmp_path / "keys")
    await store.append(
        [UserAdded(id="u1", actor="setup", user=ALICE, role="user")], expected_version=0
    )
    await Vault(store, KeyringFile(keyring)).create(ALICE, ALICE, Secret(
        name="tok", secret_type="env", metadata={"key": "T"}, value={"value": "v"},
    ))  # fmt: skip
    cluster = FakeCluster()
    executor = make_executor(store, cluster, tmp_path / "agent", None)  # no keyring on this node
    await executor.prepare()
    job, run_id = await placed(scheduler)
    executor.begin(job.key)
    await asyncio.wait_for(executor.run(job.key, job, RankControl(job.key), resume=False), 30)
    state = await scheduler.wait_status(run_id, RunStatus.FAILED)
    assert state.latest.reason is not None
    assert state.latest.reason.code == "SecretsUnavailable"
    assert "no keyring" in state.latest.reason.message
    assert cluster.created == []
