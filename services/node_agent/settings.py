"""Settings of one node-agent, from ``RUNPLANE_*`` environment variables.

Unset hardware fields are filled from the machine once, when the settings are read: the node
name from the hostname, GPUs from NVML (none without it; tests and the local stack
simulate GPUs with ``RUNPLANE_GPUS``, and get UUIDs marked simulated), CPUs from the OS.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator

from services.core import timeouts
from services.core.settings import KeyringSettings
from services.node_agent.hardware import SIMULATED_PREFIX, detect_gpus, simulated
from services.node_agent.isolation import DEFAULT_UIDS, parse_uid_range
from services.node_agent.shim.lease import LEASE

UNKNOWN_GPU_TYPE = "gpu"


def default_homes(data_dir: Path) -> Path:
    """Where an agent with ``data_dir`` puts the ranks' homes unless ``ranks_dir`` says: a
    place every uid can pass through when the ranks run as uids of their own (root), else
    beside its own files."""
    return Path("/var/lib/runplane/ranks") if os.geteuid() == 0 else data_dir / "homes"


class NodeAgentSettings(KeyringSettings):
    node: str = Field(default_factory=socket.gethostname, min_length=1, description="Node name.")
    cluster: str = Field(default="local", min_length=1, description="The cluster it joins.")
    gpus: int | None = Field(
        default=None, ge=0, description="GPUs of the node (default: from NVML, else 0)."
    )
    gpu_type: str | None = Field(
        default=None,
        description="e.g. a100_80gb (default: from NVML, else 'gpu'; None without GPUs).",
    )
    gpu_uuids: list[str] | None = Field(
        default=None,
        description="The GPUs' UUIDs, by index, as a JSON list (default: from NVML; with "
        "RUNPLANE_GPUS set, simulated ones: GPU-simulated-<node>-<index>).",
    )
    gpu_health_poll_s: float = Field(
        default=5.0,
        gt=0,
        description="Between NVML's health checks of the GPUs (ECC, retired pages, lost); Xid "
        "errors are seen as they happen. Simulated GPUs are not watched.",
    )
    gpu_sample_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="Between NVML samples of each GPU's utilization, memory used and power: "
        "the metrics' gauges, and each rank's summary on rank.exited.",
    )
    health_check_command: str | None = Field(
        default=None,
        description="A shell command that checks the node (Slurm's HealthCheckProgram), run at "
        "start and every health_check_interval_s; a non-zero exit or a timeout cordons the "
        "node with its output as the reason. Unset: none.",
    )
    health_check_interval_s: float = Field(
        default=300.0, gt=0, description="Between runs of health_check_command."
    )
    health_check_timeout_s: float = Field(
        default=60.0, gt=0, description="How long health_check_command may run: past it, failed."
    )
    cpus: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="CPUs of the node."
    )
    data_dir: Path | None = Field(
        default=None,
        description="Workspaces and per-rank state (default ~/.runplane/node-agent/<node>).",
    )
    rank_users: Literal["dynamic", "owner"] = Field(
        default="dynamic",
        description="process, agent as root: whom a run's ranks run as. `dynamic`: a uid of "
        "its own per run, from rank_uids; `owner`: the run owner's account on the node (by "
        "name). An agent that is not root runs them as itself (no isolation).",
    )
    rank_uids: str = Field(
        default=DEFAULT_UIDS,
        description="process: the uids (FIRST-LAST) handed to runs with rank_users=dynamic; "
        "none of the node's accounts is ever handed out.",
    )
    ranks_dir: Path | None = Field(
        default=None,
        description="process: where each rank's own files are (its HOME: workspace, virtual "
        "environment, run token, secrets). Default: /var/lib/runplane/ranks when the agent is "
        "root (a rank must reach it), else <data_dir>/homes.",
    )
    cgroup_parent: Path | None = Field(
        default=None,
        description="process: the cgroup v2 directory under which each rank gets a cgroup "
        "(default: runplane-ranks under the agent's own). Where none can be made, each "
        "command's shim is its subreaper instead (said at start).",
    )
    grace_period_s: float = Field(
        default=30.0,
        ge=0,
        description="Between SIGTERM and SIGKILL when a rank is stopped (kubernetes: the "
        "Pods' terminationGracePeriodSeconds, rounded up).",
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, description="Between heartbeats (at least 4 per heartbeat_ttl_s)."
    )
    heartbeat_ttl_s: float = Field(
        default=timeouts.HEARTBEAT_TTL_S,
        gt=0,
        description="Expiry of the heartbeat key: silent this long, lost.",
    )
    fence_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="A rank whose agent has not renewed the node's lease for this long is "
        "stopped by its shim (docs/fencing.md). Default: half of heartbeat_ttl_s. The agent "
        "refuses a fence that could end after the node can be declared lost.",
    )
    fence_grace_s: float | None = Field(
        default=None,
        ge=0,
        description="Between SIGTERM and SIGKILL of a fenced rank. Default: a fifth of "
        "heartbeat_ttl_s.",
    )
    fence_on_disconnect: bool = Field(
        default=False,
        description="Stop renewing the lease (so the ranks are fenced) while Valkey cannot be "
        "reached. On: a node cut off alone never runs beside its retry; a Valkey outage longer "
        "than the fence stops every run. Off (default): runs outlive an outage; a node cut off "
        "alone is ended when it reconnects (docs/fencing.md).",
    )
    executor: Literal["process", "kubernetes", "container"] = Field(
        default="process",
        description="How ranks run: local processes, a Pod per rank, or a container per rank "
        "(podman: docs/containers.md).",
    )
    kube_namespace: str = Field(
        default="default", min_length=1, description="kubernetes: the namespace of the Pods."
    )
    kube_config: Path | None = Field(
        default=None,
        description="kubernetes: a kubeconfig file (default: $KUBECONFIG or ~/.kube/config).",
    )
    kube_context: str | None = Field(
        default=None, description="kubernetes: the kubeconfig context (default: its current one)."
    )
    kube_in_cluster: bool = Field(
        default=False,
        description="kubernetes: use the Pod's service account (the agent runs in the cluster).",
    )
    kube_node_name: str | None = Field(
        default=None,
        description="kubernetes: pin every Pod to this Kubernetes node (one agent per GPU "
        "node); unset, the Kubernetes scheduler places them.",
    )
    kube_image_pull_backoff_s: float = Field(
        default=300.0,
        ge=0,
        description="kubernetes: how long a rank may fail to pull its image (ErrImagePull, "
        "ImagePullBackOff) before it fails with FailedImagePull.",
    )
    kube_unschedulable_after_s: float = Field(
        default=600.0,
        gt=0,
        description="kubernetes: how long a rank's Pod may wait for a Kubernetes node before "
        "the rank fails (system, Unschedulable; retried with retry_on_system_failure).",
    )
    kube_python: str = Field(
        default="python3",
        min_length=1,
        description="kubernetes: the image's interpreter that creates a rank's virtual "
        "environment (pip_packages, git_repo's pip_install).",
    )
    kube_run_as_user: int = Field(
        default=1000,
        ge=0,
        description="kubernetes: the uid (and gid, and fsGroup) every container of a rank runs "
        "as, so the Pods meet the `restricted` Pod Security Standard (runAsNonRoot). 0: root, "
        "for an image that needs it; its Pods then meet `baseline` only (docs/kubernetes.md).",
    )
    container_engine: str = Field(
        default="podman",
        min_length=1,
        description="container: the engine's command (a name on the PATH, or a path).",
    )
    container_engine_args: list[str] = Field(
        default_factory=list,
        description="container: the engine's global flags, before every command, as a JSON "
        'list (`["--runtime", "runc", "--cgroup-manager", "cgroupfs"]`, `["--root", DIR]`).',
    )
    container_conf: Path | None = Field(
        default=None,
        description="container: a containers.conf for the engine (its CONTAINERS_CONF); unset, "
        "the engine's own (docs/containers.md: when podman's defaults do not run here).",
    )
    container_memory: str | None = Field(
        default=None,
        pattern=r"^[0-9]+[bkmgBKMG]?$",
        description="container: each rank's memory limit (`64g`), swap included; past it the "
        "kernel kills the command and the rank ends OOMKilled. Unset: no limit.",
    )
    container_network: str = Field(
        default="host",
        min_length=1,
        description="container: the ranks' network; `host` shares the node's, as process ranks "
        "do (MASTER_ADDR, MASTER_PORT).",
    )
    container_python: str = Field(
        default="python3",
        min_length=1,
        description="container: the image's interpreter that creates a rank's virtual "
        "environment (pip_packages, git_repo's pip_install).",
    )
    container_cdi_dirs: list[Path] = Field(
        default_factory=lambda: [Path("/etc/cdi"), Path("/var/run/cdi")],
        description="container: where the node's CDI specs are (GPUs are passed as "
        "nvidia.com/gpu=<index> devices when one of kind nvidia.com/gpu is there).",
    )
    api_url: str | None = Field(
        default=None,
        description="The API server's GraphQL URL as ranks reach it (http://HOST:PORT/graphql). "
        "Set, each rank gets a run token and MOSAICML_PLATFORM, MOSAICML_ACCESS_TOKEN_FILE and "
        "MOSAICML_API_ENDPOINT, so mcli and Composer inside it report back; unset, none.",
    )
    output_buffer_lines: int = Field(
        default=50_000,
        ge=100,
        description="Output lines a rank may have in flight before "
        "lines are dropped (and counted, with a marker in their place).",
    )

    @model_validator(mode="after")
    def _fill_from_machine(self) -> Self:
        if self.gpus is None:
            detected = detect_gpus()
            self.gpus = detected.gpus
            if self.gpu_type is None:
                self.gpu_type = detected.gpu_type
            if self.gpu_uuids is None:
                self.gpu_uuids = detected.uuids
        if self.gpu_uuids is None:
            self.gpu_uuids = simulated(self.node, self.gpus)
        elif len(self.gpu_uuids) != self.gpus:
            msg = f"gpu_uuids names {len(self.gpu_uuids)} GPUs, the node has {self.gpus}"
            raise ValueError(msg)
        if self.gpus == 0:
            self.gpu_type = None
        elif self.gpu_type is None:
            self.gpu_type = UNKNOWN_GPU_TYPE  # GPUs of no known kind (simulated ones, say)
        if self.data_dir is None:
            self.data_dir = Path.home() / ".runplane" / "node-agent" / self.node
        parse_uid_range(self.rank_uids)  # a bad range is refused at start, naming itself
        if self.fence_timeout_s is None:
            self.fence_timeout_s = timeouts.fence_timeout_default(self.heartbeat_ttl_s)
        if self.fence_grace_s is None:
            self.fence_grace_s = timeouts.fence_grace_default(self.heartbeat_ttl_s)
        timeouts.check_order(self.fence_timeout_s, self.fence_grace_s, self.heartbeat_ttl_s)
        return self

    @property
    def beat_every_s(self) -> float:
        """At least four beats per expiry: a slow round trip, or a restarted agent's start-up,
        must not let the key expire while the node is fine."""
        return min(self.heartbeat_interval_s, self.heartbeat_ttl_s / 4)

    @property
    def fence_s(self) -> tuple[float, float]:
        """The fence timeout and grace (filled in by the validator)."""
        assert self.fence_timeout_s is not None, "filled in by the validator"
        assert self.fence_grace_s is not None, "filled in by the validator"
        return self.fence_timeout_s, self.fence_grace_s

    @property
    def lease_path(self) -> Path:
        return self.data_path / LEASE

    @property
    def gpu_count(self) -> int:
        assert self.gpus is not None, "filled in by the validator"
        return self.gpus

    @property
    def uuids(self) -> list[str]:
        assert self.gpu_uuids is not None, "filled in by the validator"
        return self.gpu_uuids

    @property
    def physical_gpus(self) -> bool:
        """The GPUs are NVML's, not simulated: there is hardware to watch."""
        return bool(self.uuids) and not any(u.startswith(SIMULATED_PREFIX) for u in self.uuids)

    @property
    def homes_path(self) -> Path:
        """Where the ranks' homes are (``ranks_dir``, or its default)."""
        return self.ranks_dir if self.ranks_dir is not None else default_homes(self.data_path)

    @property
    def data_path(self) -> Path:
        assert self.data_dir is not None, "filled in by the validator"
        return self.data_dir

    @property
    def actor(self) -> str:
        return f"node-agent@{self.node}"
