"""Tables in mcli's shapes (``reference/example-output``): ``get runs``, ``describe run``,
``util``; and runplane's own (billing, audit).

Pure: functions take the objects and ``now`` and return Rich renderables or plain data; the
commands print them. Times are shown in the local time zone as mcli shows them
(``2026-11-24 02:04 PM``). Off a terminal, tables are laid out ``$COLUMNS`` wide (200 by
default), so pipes and files get whole lines rather than wrapped cells.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import yaml
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.models import Resumption, Run
from cli.sdk.clusters import Cluster, RunUtilization
from events.status import RunStatus

S = RunStatus
DASH = "-"
NONE_FOUND = "No items found."
_CONFIG_ORDER = (
    "name",
    "image",
    "scheduling",
    "compute",
    "integrations",
    "env_variables",
    "parameters",
    "metadata",
    "command",
)


def make_console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS") or 200)
    return Console(
        stderr=stderr, width=width, highlight=False, markup=False, emoji=False, soft_wrap=False
    )


def when(moment: datetime | None) -> str:
    return DASH if moment is None else moment.astimezone().strftime("%Y-%m-%d %I:%M %p")


def age(since: datetime, now: datetime) -> str:
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}min"
    if seconds < 86400:
        return f"{seconds // 3600}hr"
    return f"{seconds // 86400}d"


def plain_table(*headers: str, show_header: bool = True) -> Table:
    """mcli's borderless table: columns two spaces apart, no outer padding."""
    table = Table(
        box=None,
        show_header=show_header,
        header_style="bold",
        pad_edge=False,
        padding=(0, 1),
        show_edge=False,
    )
    for header in headers:
        table.add_column(header, no_wrap=True)
    return table


def title(text: str) -> Text:
    return Text(text, style="bold")


# --- get runs ------------------------------------------------------------------------------


def instance(resumption: Resumption) -> str:
    per_node = resumption.gpus // max(resumption.node_count, 1)
    if resumption.gpus == 0:
        return "cpu"
    return f"{per_node}x {resumption.gpu_type or 'gpu'}"


def status_text(resumption: Resumption) -> str:
    shown = resumption.status.display_name
    code = resumption.reason_code
    if code and (
        resumption.status is S.FAILED or (resumption.status is S.STOPPED and code != "Stopped")
    ):
        return f"{shown} ({code})"
    return shown


def run_rows(
    runs: Sequence[Run], *, users: bool = False, ids: bool = False, expanded: bool = False
) -> list[dict[str, str | None]]:
    """One row per resumption, newest first (the three newest unless ``expanded``); the
    run's own columns only on its first row (None: a column not shown)."""
    rows: list[dict[str, str | None]] = []
    for run in runs:
        shown = list(reversed(run.resumptions))
        for n, resumption in enumerate(shown if expanded else shown[:3]):
            first = n == 0
            rows.append(
                {
                    "name": run.name if first else "",
                    "ID": (run.run_uid if first else "") if ids else None,
                    "User": (run.created_by if first else "") if users else None,
                    "Cluster": resumption.cluster if first else "",
                    "Nodes": str(resumption.node_count) if first else "",
                    "Instance": instance(resumption) if first else "",
                    "Resumption": str(resumption.index),
                    "Status": status_text(resumption),
                    "Start Time": when(resumption.started_at),
                    "End Time": when(resumption.ended_at),
                }
            )
    return rows


def runs_table(
    runs: Sequence[Run],
    *,
    users: bool = False,
    ids: bool = False,
    expanded: bool = False,
    metadata: Sequence[str] = (),
) -> Table:
    """``get runs``'s table; a column for each key of ``metadata`` (``-m``), headed as mcli
    heads it (the key's last ``/`` part, upper case): the run's value on its first row, ``-``
    when the run has none."""
    keys = list(dict.fromkeys(metadata))
    headers = ["NAME"]
    headers += ["ID"] if ids else []
    headers += ["USER"] if users else []
    headers += ["CLUSTER", "NODES", "INSTANCE", "RESUMPTION", "STATUS", "START TIME", "END TIME"]
    headers += [key.split("/")[-1].upper() for key in keys]
    table = plain_table(*headers)
    for run in runs:
        for row in run_rows([run], users=users, ids=ids, expanded=expanded):
            first = bool(row["name"])
            if run.is_deleted and first:
                row["name"] = f"{row['name']} (deleted)"  # only with --include-deleted
            values = [
                (metadata_text(run.metadata[key]) if key in run.metadata else DASH) if first else ""
                for key in keys
            ]
            table.add_row(*(value for value in row.values() if value is not None), *values)
    return table


def metadata_text(value: object) -> str:
    """A metadata value as a table shows it: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --- describe run ----------------------------------------------------------------------------


def _pairs(pairs: Iterable[tuple[str, object]]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 5, 0, 0))
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    for key, value in pairs:
        table.add_row(key, str(value))
    return table


def submitted_yaml(run: Run) -> str:
    config = run.submitted_config
    data: dict[str, Any] = {}
    for key in _CONFIG_ORDER:
        value = getattr(config, key)
        if value or key in ("name", "image", "command", "compute"):
            data[key] = value
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False).rstrip()


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (commands) as YAML literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def describe(run: Run) -> Group:
    latest = run.latest_resumption
    details: list[tuple[str, object]] = [
        ("Run Name", run.name),
        ("Run Type", run.run_type),
        ("Run ID", run.run_uid),
        ("Last Resumption ID", latest.index),
        ("User", run.created_by),
        ("Cluster", run.cluster),
        ("Image", run.image),
        ("Priority", run.priority.title()),
        ("Status", run.status.display_name),
        ("Preemptible", run.preemptible),
        ("Watchdog", run.retry_on_system_failure),
        ("Max Retries", run.max_retries),
    ]
    if run.max_duration is not None:
        details.append(("Max Duration", f"{run.max_duration:g}h"))
    if run.reason:
        details.append(("Reason", run.reason))
    if run.is_deleted:
        details.append(("Deleted", True))
    if run.parent is not None:
        details.append(("Parent Run", run.parent))
    compute = run.submitted_config.compute
    parts: list[RenderableType] = [
        title("Run Details"),
        _pairs(details),
        "",
        title("Compute Requests"),
        _pairs(
            [
                ("Cluster", compute.get("cluster", run.cluster)),
                ("GPU Type", compute.get("gpu_type") or run.gpu_type or DASH),
                ("GPUs", compute.get("gpus", run.gpus)),
                ("CPUs", compute.get("cpus") or 0),
                ("Nodes", compute.get("nodes") or latest.node_count),
            ]
        ),
        "",
    ]
    if run.metadata:
        metadata = plain_table("KEY", "VALUE")
        for key, value in run.metadata.items():
            metadata.add_row(str(key), metadata_text(value))
        parts += [title("Run Metadata"), metadata, ""]
    if run.children:
        children = plain_table("NAME", "STATUS", "CREATED")
        for child in run.children:
            children.add_row(child.name, child.status.display_name, when(child.created_at))
        parts += [title("Child Runs"), children, ""]
    if run.nodes:
        # mcli's columns; and the physical GPUs, where the placement named them (RMA triage),
        # and how busy they were, where the node sampled them
        physical = any(node.gpu_uuids for node in run.nodes)
        sampled = any(node.gpu_utilization is not None for node in run.nodes)
        extra = ["GPUS"] * physical + ["GPU UTIL", "PEAK GPU MEM"] * sampled
        nodes = plain_table("RANK", "NODE NAME", "STATUS", "REASON", *extra)
        for node in run.nodes:
            row = [str(node.rank), node.name, node.status.display_name, node.reason or ""]
            if physical:
                row.append(physical_gpus(node.gpus, node.gpu_uuids))
            if sampled:
                row += usage_cells(node.gpu_utilization, node.gpu_memory_peak_mib)
            nodes.add_row(*row)
        parts += [title("Run Nodes"), nodes, ""]
    parts += [title("Run Event Log"), event_log(run), ""]
    parts += [title("Submitted Run Configuration"), submitted_yaml(run)]
    return Group(*parts)


def physical_gpus(gpus: Sequence[int], uuids: Sequence[str]) -> str:
    """``0 GPU-8f2c..., 1 GPU-1b7e...``: each GPU's index on its node and its UUID, the
    physical GPU an RMA is about; the indices alone where the placement named no UUID."""
    if len(uuids) != len(gpus):
        return ", ".join(str(gpu) for gpu in gpus)
    return ", ".join(f"{gpu} {uuid}" for gpu, uuid in zip(gpus, uuids, strict=True))


def usage_cells(utilization: int | None, peak_mib: int | None) -> list[str]:
    """``["87%", "61.2 GiB"]``; dashes where the rank was not sampled."""
    if utilization is None:
        return ["-", "-"]
    return [f"{utilization}%", f"{(peak_mib or 0) / 1024:.1f} GiB"]


def event_log(run: Run) -> Table:
    """Every resumption's events, a separator line between resumptions."""
    table = Table(box=box.HEAVY_HEAD, padding=(0, 2), header_style="bold")
    for header in ("Time", "Resumption", "Event"):
        table.add_column(header, no_wrap=True)
    previous: int | None = None
    for event in run.events:
        if previous is not None and event.resumption_index != previous:
            table.add_section()
        previous = event.resumption_index
        table.add_row(when(event.time), str(event.resumption_index), event.text)
    return table


# --- util --------------------------------------------------------------------------------------


def utilization(clusters: Sequence[Cluster], now: datetime, *, hide_users: bool) -> Group:
    several = len(clusters) > 1
    suffix = " by Cluster" if several else ""
    # Cordoned and failed GPUs get a column each only while there are any (mcli's table else).
    utils = [u for c in clusters for u in c.utilization.cluster_instance_utils]
    cordoned = any(u.gpus_cordoned for u in utils)
    failed = any(u.gpus_failed for u in utils)
    instances = plain_table(
        "NAME",
        "INSTANCE_NAME",
        "NODE_INFO",
        "GPUS_AVAILABLE",
        *(["GPUS_CORDONED"] if cordoned else []),
        *(["GPUS_FAILED"] if failed else []),
        "GPUS_USED",
        "GPUS_TOTAL",
    )
    for cluster in clusters:
        for n, util in enumerate(cluster.utilization.cluster_instance_utils):
            instances.add_row(
                cluster.name if n == 0 else "",
                util.instance.name,
                util.node_info,
                str(util.gpus_available),
                *([str(util.gpus_cordoned)] if cordoned else []),
                *([str(util.gpus_failed)] if failed else []),
                str(util.gpus_used),
                str(util.gpus_total),
            )
    parts: list[RenderableType] = [Text(f"Training Instances{suffix}:"), _or_none(instances)]
    if hide_users:
        return Group(*parts)
    for preemptible, label in ((False, "Non-Preemptible"), (True, "Preemptible")):
        active = plain_table(
            *(["NAME"] if several else []), "RUN_NAME", "USER", "AGE", "GPUS", "PRIORITY"
        )
        for cluster in clusters:
            for run in cluster.utilization.active_runs_by_user:
                if run.preemptible is preemptible:
                    active.add_row(*_name(cluster, several), *_run_cells(run, now))
        parts += ["", Text(f"Active {label} Runs{suffix}:"), _or_none(active)]
    queued = plain_table(
        *(["NAME"] if several else []),
        "POS",
        "RUN_NAME",
        "USER",
        "AGE",
        "GPUS",
        "PRIORITY",
        "REASON",
    )
    for cluster in clusters:
        for run in cluster.utilization.queued_runs_by_user:
            queued.add_row(
                *_name(cluster, several),
                str(run.position),
                *_run_cells(run, now),
                run.reason or "Waiting",
            )
    parts += ["", Text(f"Queued Runs{suffix}:"), _or_none(queued)]
    return Group(*parts)


def _name(cluster: Cluster, several: bool) -> list[str]:
    return [cluster.name] if several else []


def _run_cells(run: RunUtilization, now: datetime) -> list[str]:
    return [run.run_name, run.user, age(run.created_at, now), str(run.gpu_num), run.priority]


def _or_none(table: Table) -> RenderableType:
    return table if table.row_count else Text(NONE_FOUND)
