"""A rank as the engine's command lines: ``run`` of its integrations' containers and of its
command's container. Plain argument lists, after the engine's own binary and global flags.

The command's container (invariants):
- the image by the ID the rank's pull gave (``--pull never``): what was pulled is what runs,
  even if the tag moves meanwhile; integrations run from the same ID;
- ``--init``: a small init (podman's catatonit, Docker's tini) is PID 1 and passes SIGTERM on
  to the command, which as PID 1 would ignore it (a process runs as PID 1 with no default
  signal actions): a stop means SIGTERM, the grace period, then SIGKILL, as for a process;
- ``--network host``: the ranks share the node's network as a process rank does, so
  MASTER_ADDR and MASTER_PORT mean the same thing on every executor (settings may choose
  another network);
- the layout of ``services.node_agent.incontainer``: the rank's shared directory at
  ``/runplane`` (read-write: the workspace, the virtual environment), the parameters file,
  the run token (read-only), and the owner's mounted secrets (read-only), all bind mounts of
  the rank's files on this node;
- the mcli environment (``services.node_agent.environment``) in an env file the agent writes
  (0600) and removes once the container exists: variables are never on a command line, where
  any user of the node could read them. A value an env file cannot hold (a newline in it) is
  named with ``--env NAME`` and passed in the engine's own environment (``passed``);
- GPUs: with a CDI spec on the node, ``--device nvidia.com/gpu=<index>`` for each of the
  rank's GPUs, which the container then numbers from 0 (so no CUDA_VISIBLE_DEVICES, as on
  Kubernetes); without (simulated GPUs), CUDA_VISIBLE_DEVICES as on the ``process`` executor;
  a rank without GPUs gets ``NVIDIA_VISIBLE_DEVICES=void``;
- a memory limit, when the agent sets one, with as much swap (none beyond it): past it the
  kernel kills the command, reported ``OOMKilled``;
- labels from ``naming``; the log in the engine's ``k8s-file`` format (timestamped lines,
  ``logs --follow`` works on every podman).

Pure: no IO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from services.node_agent import runtoken
from services.node_agent.container import naming
from services.node_agent.environment import rank_environment
from services.node_agent.incontainer import (
    COMMAND_VARIABLE,
    PARAMETERS_FILE,
    PRELUDE,
    SHARED,
    TOKEN_FILE,
    integration_env,
    integration_script,
)
from services.node_agent.job import RankJob

CDI_GPU = "nvidia.com/gpu"
#: Every rank of a node runs on that node's network: rank 0 listens on the node's loopback
#: in a one-machine stack, as on the ``process`` executor.
MASTER_ADDR = "127.0.0.1"


class Options(NamedTuple):
    """What the agent's settings add to a job."""

    node: str
    actor: str
    network: str = "host"
    memory: str | None = None  # per rank, in the engine's units (``16g``)
    cdi: bool = False  # the node has a CDI spec for nvidia.com/gpu: GPUs become devices
    python: str = "python3"  # the image's interpreter, for the rank's virtual environment
    api_url: str | None = None


class Files(NamedTuple):
    """The rank's files on this node that its containers mount."""

    shared: Path  # -> /runplane
    parameters: Path  # -> /etc/runplane/parameters.yaml
    env_file: Path
    token: Path | None = None  # -> /var/run/runplane/token, with an API to report to
    #: The owner's mounted secrets: (the path in the container, the file here).
    secrets: Sequence[tuple[PurePosixPath, Path]] = ()


class EnvFile(NamedTuple):
    text: str  # the env file's content: NAME=value per line
    passed: dict[str, str]  # the variables it cannot hold: ``--env NAME``, value in the engine's


def environment(
    job: RankJob, options: Options, *, token: bool, secrets: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The command's environment in its container (none of the node's own variables)."""
    platform = (
        runtoken.platform_environment(options.api_url, TOKEN_FILE)
        if token and options.api_url is not None
        else None
    )
    env = rank_environment(
        job,
        base={},
        master_addr=MASTER_ADDR,
        parameters_path=Path(PARAMETERS_FILE),
        platform=platform,
        secrets=secrets,
    )
    if options.cdi:
        del env["CUDA_VISIBLE_DEVICES"]  # the container numbers its GPUs from 0
    if not job.gpus:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    env[COMMAND_VARIABLE] = job.spec.command
    return env


def env_file(env: Mapping[str, str]) -> EnvFile:
    """``env`` as an env file, and the variables one cannot hold (a newline in the value)."""
    lines, passed = [], {}
    for name, value in env.items():
        if "\n" in value or "\r" in value:
            passed[name] = value
        else:
            lines.append(f"{name}={value}\n")
    return EnvFile("".join(lines), passed)


def run_command(
    job: RankJob, options: Options, files: Files, *, image_id: str, passed: Sequence[str]
) -> list[str]:
    """``run`` of the command's container, detached."""
    argv = ["run", "--detach", "--name", naming.container_name(job.key)]
    argv += _labels(naming.labels(job, options.node, options.actor))
    argv += ["--init", "--log-driver", "k8s-file", "--pull", "never"]
    argv += _common(options, files, passed)
    argv += ["--volume", f"{files.parameters}:{PARAMETERS_FILE}:ro"]
    if files.token is not None:
        argv += ["--volume", f"{files.token}:{TOKEN_FILE}:ro"]
    for inside, here in files.secrets:
        argv += ["--volume", f"{here}:{inside}:ro"]
    if options.cdi:
        for gpu in job.gpus:
            argv += ["--device", f"{CDI_GPU}={gpu}"]
    return [*argv, "--entrypoint", "/bin/sh", image_id, "-c", PRELUDE]


def integration_environment(
    job: RankJob, secrets: Mapping[str, str] | None = None
) -> dict[str, str]:
    return integration_env({**job.spec.env_variables, **(secrets or {})})


def integration_command(
    job: RankJob,
    options: Options,
    files: Files,
    *,
    image_id: str,
    index: int,
    passed: Sequence[str],
) -> list[str]:
    """``run`` of integration ``index``'s container, attached (its output is the
    integration's), removed when it ends; raises ``BadIntegration``."""
    script = integration_script(
        index, job.spec.integrations[index], python=options.python, executor="container"
    )
    argv = ["run", "--rm", "--name", naming.integration_name(job.key, index)]
    argv += _labels(naming.integration_labels(job, options.node, options.actor, index))
    argv += ["--pull", "never"]
    argv += _common(options, files, passed)
    for inside, here in files.secrets:
        argv += ["--volume", f"{here}:{inside}:ro"]
    return [*argv, "--entrypoint", "/bin/sh", image_id, "-c", script]


def _common(options: Options, files: Files, passed: Sequence[str]) -> list[str]:
    argv = ["--network", options.network, "--env-file", str(files.env_file)]
    for name in passed:
        argv += ["--env", name]
    if options.memory is not None:
        argv += ["--memory", options.memory, "--memory-swap", options.memory]
    return [*argv, "--volume", f"{files.shared}:{SHARED}"]


def _labels(labels: Mapping[str, str]) -> list[str]:
    return [arg for name, value in labels.items() for arg in ("--label", f"{name}={value}")]
