"""The kubernetes executor against a real cluster: a rank runs to its end, and a stop ends one.

Runs only when ``KUBECONFIG`` names a cluster this test may create Pods in (namespace
``RUNPLANE_KUBE_NAMESPACE``, default ``default``); Pods are tiny (busybox, no GPU) and deleted
at the end. The event store is the session's real server, as everywhere. busybox runs as any
uid, so the agent keeps its default ``kube_run_as_user`` (not root: the Pods meet the
"restricted" Pod Security Standard, and a namespace that enforces it admits them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from events.status import RunStatus
from services.core.client import connect
from services.core.settings import Settings
from services.core.store import EventStore
from services.node_agent.executor import RankControl
from services.node_agent.job import job_of
from services.node_agent.kube import naming
from services.node_agent.kube.executor import KubeExecutor
from services.node_agent.reporter import Reporter
from services.node_agent.settings import NodeAgentSettings
from tests.integration.node_agent.harness import MiniScheduler, ingest, spec
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason="no Kubernetes cluster: set KUBECONFIG to run the kubernetes executor live",
)

IMAGE = "busybox:1.36"
NAMESPACE = os.environ.get("RUNPLANE_KUBE_NAMESPACE", "default")


@pytest.fixture
async def scheduler(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[MiniScheduler]:
    async with MiniScheduler(redis_url) as mini:
        yield mini


@pytest.fixture
async def executor(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> AsyncIterator[KubeExecutor]:
    node = f"live-{uuid.uuid4().hex[:8]}"  # its own label: other agents' Pods are not its
    store = EventStore(connect(redis_url), Settings(redis_url=redis_url))
    settings = NodeAgentSettings(
        node=node, gpus=0, data_dir=tmp_path, executor="kubernetes",
        kube_namespace=NAMESPACE, grace_period_s=5, kube_image_pull_backoff_s=60,
    )  # fmt: skip
    kube = KubeExecutor(settings, Reporter(store, node, settings.actor), store.redis)
    await kube.prepare()
    try:
        yield kube
    finally:
        kube.close()
        for name in list(kube.pods):
            with contextlib.suppress(Exception):
                kube.api.delete_pod(name, 0)
        await store.close()


async def test_a_rank_runs_to_its_end_on_a_real_cluster(
    scheduler: MiniScheduler, executor: KubeExecutor, redis: aioredis.Redis
) -> None:
    command = (
        "echo hello from kubernetes; echo rank $NODE_RANK of $WORLD_SIZE; echo uid $(id -u); "
        "[ -e /var/run/secrets/kubernetes.io/serviceaccount/token ] || echo no token"
    )
    run_id = await scheduler.submit(
        spec(command, image=IMAGE, gpus=0), [(executor.settings.node, [])]
    )
    state = await scheduler.state(run_id)
    job = job_of(state, state.latest, 0)
    executor.begin(job.key)
    task = asyncio.create_task(executor.run(job.key, job, RankControl(job.key), resume=False))
    await scheduler.wait_status(run_id, RunStatus.COMPLETED, within=300)
    await asyncio.wait_for(task, 60)
    lines = [entry[b"l"] for entry in await ingest(redis, run_id)]
    uid = str(executor.settings.kube_run_as_user).encode()
    assert lines == [b"hello from kubernetes", b"rank 0 of 1", b"uid " + uid, b"no token"]


async def test_a_stop_deletes_the_pod_on_a_real_cluster(
    scheduler: MiniScheduler, executor: KubeExecutor
) -> None:
    run_id = await scheduler.submit(
        spec("sleep 600", image=IMAGE, gpus=0), [(executor.settings.node, [])]
    )
    state = await scheduler.state(run_id)
    job = job_of(state, state.latest, 0)
    control = RankControl(job.key)
    executor.begin(job.key)
    task = asyncio.create_task(executor.run(job.key, job, control, resume=False))
    await scheduler.wait_status(run_id, RunStatus.RUNNING, within=300)
    await scheduler.stop(run_id)
    state = await scheduler.wait_status(run_id, RunStatus.TERMINATING)
    assert state.latest.reason is not None
    control.stop(state.latest.reason)
    await scheduler.wait_status(run_id, RunStatus.STOPPED, within=120)
    await asyncio.wait_for(task, 60)
    name = naming.pod_name(job.key)

    async def gone() -> bool:
        return await asyncio.to_thread(executor.api.get_pod, name) is None

    await eventually(gone, what=f"Pod {name} deleted", within=120)
