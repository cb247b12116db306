"""mcli's cluster functions: ``get_cluster`` and ``get_clusters``, with utilization.

A cluster is known once a node of it registered; its utilization (GPUs per instance type,
active and queued runs) is the projector's ``utilization`` read model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cli.client import Client
from cli.models import to_datetime
from cli.reads import clusters
from cli.sdk.sync import call
from projections.utilization import ClusterUtilization as Utilization
from projections.utilization import RunLine


@dataclass(frozen=True)
class Instance:
    name: str
    gpu_type: str | None
    gpus: int  # per node
    nodes: int


@dataclass(frozen=True)
class InstanceUtilization:
    cluster: str
    instance: Instance
    gpus_used: int
    gpus_available: int
    gpus_total: int
    gpus_cordoned: int = 0  # free, but on nodes an admin cordoned or drains: not available
    gpus_failed: int = 0  # reported failed by their node (an Xid, ECC errors): not available

    @property
    def node_info(self) -> str:
        return f"{self.instance.gpus}x{self.instance.gpu_type or 'cpu'}"


@dataclass(frozen=True)
class RunUtilization:
    run_name: str
    user: str
    gpu_num: int
    created_at: datetime
    priority: str
    preemptible: bool
    since: datetime
    reason: str = ""
    position: int | None = None  # in the queue, from 1


@dataclass(frozen=True)
class ClusterUtilization:
    cluster_instance_utils: list[InstanceUtilization] = field(default_factory=list)
    active_runs_by_user: list[RunUtilization] = field(default_factory=list)
    queued_runs_by_user: list[RunUtilization] = field(default_factory=list)


@dataclass(frozen=True)
class Cluster:
    name: str
    utilization: ClusterUtilization

    @property
    def gpus_available(self) -> int:
        return sum(i.gpus_available for i in self.utilization.cluster_instance_utils)


def _run(line: RunLine, position: int | None = None) -> RunUtilization:
    return RunUtilization(
        run_name=line.run_name,
        user=line.user,
        gpu_num=line.gpus,
        created_at=to_datetime(line.created_at) or datetime.min,
        priority=line.priority,
        preemptible=line.preemptible,
        since=to_datetime(line.since) or datetime.min,
        reason=line.reason,
        position=position,
    )


def cluster_of(util: Utilization) -> Cluster:
    return Cluster(
        name=util.cluster,
        utilization=ClusterUtilization(
            cluster_instance_utils=[
                InstanceUtilization(
                    cluster=util.cluster,
                    instance=Instance(
                        name=i.name, gpu_type=i.gpu_type, gpus=i.gpus_per_node, nodes=i.nodes
                    ),
                    gpus_used=i.gpus_used,
                    gpus_available=i.gpus_available,
                    gpus_total=i.gpus_total,
                    gpus_cordoned=i.gpus_cordoned,
                    gpus_failed=i.gpus_failed,
                )
                for i in util.instances
            ],
            active_runs_by_user=[_run(line) for line in util.active_runs],
            queued_runs_by_user=[_run(q.run, q.position) for q in util.queued_runs],
        ),
    )


async def fetch_clusters(client: Client, names: list[str] | None = None) -> list[Cluster]:
    return [cluster_of(util) for util in await clusters(client, names)]


def get_clusters() -> list[Cluster]:
    """Every cluster with registered nodes."""
    return call(fetch_clusters)


def get_cluster(name: str) -> Cluster:
    """One cluster; ``NotFound`` (listing the known ones) if no node of it registered."""
    return call(lambda client: fetch_clusters(client, [name]))[0]
