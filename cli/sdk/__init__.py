"""The Python SDK: mcli's functions and objects over runplane (imported as ``mcli``)."""

from __future__ import annotations

from cli.client import ClientError, NotFound
from cli.models import Node, Resumption, Run, RunLifecycle
from cli.sdk.clusters import (
    Cluster,
    ClusterUtilization,
    Instance,
    InstanceUtilization,
    RunUtilization,
    get_cluster,
    get_clusters,
)
from cli.sdk.logs import follow_run_logs, get_run_logs
from cli.sdk.runs import (
    create_run,
    delete_run,
    delete_runs,
    get_run,
    get_runs,
    start_run,
    start_runs,
    stop_run,
    stop_runs,
    update_run,
    update_run_metadata,
    wait_for_run_status,
    watch_run_status,
)
from cli.sdk.secrets import create_secret, delete_secrets, get_secrets
from cli.secrets import SecretInfo
from events.config import RunConfig
from events.secrets import Secret
from events.status import RunStatus

#: mcli's name for an error the API returned (status code in ``.code``).
MAPIException = ClientError

__all__ = [
    "ClientError",
    "Cluster",
    "ClusterUtilization",
    "Instance",
    "InstanceUtilization",
    "MAPIException",
    "Node",
    "NotFound",
    "Resumption",
    "Run",
    "RunConfig",
    "RunLifecycle",
    "RunStatus",
    "RunUtilization",
    "Secret",
    "SecretInfo",
    "create_run",
    "create_secret",
    "delete_run",
    "delete_runs",
    "delete_secrets",
    "follow_run_logs",
    "get_cluster",
    "get_clusters",
    "get_run",
    "get_run_logs",
    "get_runs",
    "get_secrets",
    "start_run",
    "start_runs",
    "stop_run",
    "stop_runs",
    "update_run",
    "update_run_metadata",
    "wait_for_run_status",
    "watch_run_status",
]
