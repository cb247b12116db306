"""What the local stack's services are started with (``cli.stack``): each one's module and
environment: its login to the log (its user's password file, never the password), the log's
layout (a cluster, its replicas, its partitions), its ports, and what only some are given (the
keyring that seals users' secrets: the API server and the node-agents only)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

from cli.stackfiles import (
    ServiceSpec,
    StackConfig,
    cluster_dir,
    event_archive_dir,
    secrets_dir,
)
from services.core import acl, passwords, sealing
from services.core.valkey import HOST, free_port
from services.core.valkey_cluster import Layout


class Stack(Protocol):
    """What of a local stack (``cli.stack.LocalStack``) its services' environments take."""

    state_dir: Path
    config: StackConfig
    valkey_port: int
    api_port: int

    @property
    def api_url(self) -> str: ...


def log_settings(config: StackConfig) -> dict[str, Any]:
    """The settings of the log's layout that are not the defaults: on a cluster,
    ``RUNPLANE_REDIS_CLUSTER`` and ``RUNPLANE_APPEND_REPLICAS``; ``RUNPLANE_PARTITIONS``."""
    found: dict[str, Any] = {}
    if config.is_cluster:
        found |= {"redis_cluster": True, "append_replicas": config.append_replicas}
    if config.partitions != 1:
        found["partitions"] = config.partitions
    return found


def _log_env(config: StackConfig) -> dict[str, str]:
    """The same, as every service's variables."""
    return {
        f"RUNPLANE_{name.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in log_settings(config).items()
    }


def _login(state_dir: Path, user: str) -> dict[str, str]:
    """The variables that log a service in as ``user``: its name and its password's file."""
    return {
        "RUNPLANE_REDIS_USERNAME": user,
        "RUNPLANE_REDIS_PASSWORD_FILE": str(passwords.password_file(secrets_dir(state_dir), user)),
    }


def _keyring(state_dir: Path) -> dict[str, str]:
    """The variable that gives the API server and the node-agents (and no other service)
    the keyring that seals users' secrets."""
    path = sealing.keyring_path(secrets_dir(state_dir))
    return {"RUNPLANE_SECRETS_KEYRING_FILE": str(path)}


def service_specs(stack: Stack) -> list[ServiceSpec]:
    """What the supervisor starts for ``stack`` beside its servers: each service's module and
    environment (its login, its ports, the log's layout), and a metrics port each."""
    config, state_dir = stack.config, stack.state_dir
    specs = [
        ServiceSpec("scheduler", "services.scheduler", _login(state_dir, acl.SCHEDULER)),
        ServiceSpec("projector", "services.projector", _login(state_dir, acl.PROJECTOR)),
        ServiceSpec(
            "log-collector",
            "services.log_collector",
            {
                "RUNPLANE_ARCHIVE_DIR": str(state_dir / "archive"),
                # where RUNPLANE_RETAIN archives the log, unless the user names a place
                "RUNPLANE_EVENT_ARCHIVE": os.environ.get(
                    "RUNPLANE_EVENT_ARCHIVE", str(event_archive_dir(state_dir))
                ),
                **_login(state_dir, acl.LOG_COLLECTOR),
            },
        ),
        ServiceSpec(
            "api",
            "services.api",
            {
                "RUNPLANE_API_HOST": HOST,
                "RUNPLANE_API_PORT": str(stack.api_port),
                "RUNPLANE_ARCHIVE_DIR": str(state_dir / "archive"),
                **_keyring(state_dir),
                **_login(state_dir, acl.API),
            },
        ),
    ]
    for n in range(config.nodes):
        name = f"node-{n}"
        env = {
            "RUNPLANE_NODE": name,
            "RUNPLANE_CLUSTER": config.cluster,
            "RUNPLANE_DATA_DIR": str(state_dir / "nodes" / name),
            "RUNPLANE_GRACE_PERIOD_S": str(config.grace_period_s),
            "RUNPLANE_API_URL": stack.api_url,
            **_keyring(state_dir),
            "RUNPLANE_EXECUTOR": config.executor,
            **_login(state_dir, acl.NODE_AGENT),
        }
        if config.gpus_per_node is not None:
            env["RUNPLANE_GPUS"] = str(config.gpus_per_node)
            env["RUNPLANE_GPU_TYPE"] = config.gpu_type
        specs.append(ServiceSpec(name, "services.node_agent", env))
    taken = {stack.valkey_port, stack.api_port}
    if (layout := Layout.load(cluster_dir(state_dir))) and config.is_cluster:
        taken |= {*layout.ports, *layout.buses}
    ports = free_ports(len(specs), taken=taken)
    for spec, port in zip(specs, ports, strict=True):
        spec.metrics_port = port
        spec.env |= {"RUNPLANE_METRICS_HOST": HOST, "RUNPLANE_METRICS_PORT": str(port)}
        spec.env |= _log_env(config)
    return specs


def free_ports(count: int, taken: Collection[int] = ()) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now, none of them in ``taken``."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and port not in taken:
            ports.append(port)
    return ports
