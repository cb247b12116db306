"""The Grafana dashboard (deploy/grafana/runplane.json) queries only metrics runplane exports.

Every PromQL expression in it (panel targets, and the selectors of its variables'
``label_values``) is parsed (``tests.promql``), and each metric it reads must be a series that
the registries of the services export: collected from the modules that define the metrics, as
the exposition format names them (a counter ``x`` as ``x_total``, a histogram as ``x_bucket``,
``x_sum`` and ``x_count``), never from a list kept here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import services.api.metrics
import services.core.groups
import services.core.store
import services.projector.metrics
import services.scheduler.metrics
from services.core.metrics import REGISTRY
from services.scheduler.cluster import ClusterState
from tests.promql import PromQLError, metrics_of

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "runplane.json"
#: What each family of a type is exported as (prometheus-client's exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*\w+\s*\)\s*$")
#: The modules whose metrics are collected below (imported for their registrations).
DEFINING = (
    services.api.metrics,
    services.core.groups,
    services.core.store,
    services.projector.metrics,
    services.scheduler.metrics,
)


def exported() -> set[str]:
    """Every series name the registry of a runplane process can export."""
    collector = services.scheduler.metrics.CLUSTER
    before, collector.state = collector.state, ClusterState()  # the active scheduler's gauges
    try:
        families = list(REGISTRY.collect())
    finally:
        collector.state = before
    return {family.name + suffix for family in families for suffix in SUFFIXES[family.type]}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)  # a collapsed row holds its panels


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every query the dashboard makes."""
    board = dashboard()
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(text)
            assert match, f"variable {variable['name']}: not a label_values(...) query: {text}"
            found.append((f"variable {variable['name']!r}", match["selector"]))
    return found


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    names = exported()
    assert "runplane_placements_total" in names  # the registries were collected
    assert "runplane_admission_wait_seconds_bucket" in names
    queried: set[str] = set()
    for where, expr in expressions():
        reads = metrics_of(expr)
        assert reads, f"{where} reads no metric: {expr}"
        missing = reads - names
        assert not missing, f"{where} queries {sorted(missing)}, which runplane does not export"
        queried |= reads
    # Each of the control plane's own metrics has a panel.
    family = re.compile(r"_(total|created|bucket|sum|count)$")
    own = {family.sub("", name) for name in names if name.startswith("runplane_")}
    unused = own - {family.sub("", name) for name in queried}
    assert not unused, f"metrics without a panel: {sorted(unused)}"


def test_the_dashboard_is_one_grafana_board_on_a_chosen_prometheus() -> None:
    board = dashboard()
    assert board["uid"] == "runplane"
    every = list(panels(board))
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize(
    ("expr", "reads"),
    [
        ("up", {"up"}),
        ('sum by (a) (rate(x_total{b="c", d=~"$v"}[$__rate_interval]))', {"x_total"}),
        ("histogram_quantile(0.99, sum(rate(h_bucket[5m])) by (le))", {"h_bucket"}),
        ("a / on (x) group_left (y) b > bool 0 or vector(1)", {"a", "b"}),
        ("max_over_time(g[1h:5m] offset 1d) - -Inf", {"g"}),
        ("topk(3, info_total)", {"info_total"}),
    ],
)
def test_the_parser_finds_what_an_expression_reads(expr: str, reads: set[str]) -> None:
    assert metrics_of(expr) == reads


@pytest.mark.parametrize(
    "expr",
    ["sum(x", "rate(x[5m]", "x{a=}", "nosuch_function(x)", "x y", "rate(x[five])", "x +"],
)
def test_the_parser_refuses_what_is_not_promql(expr: str) -> None:
    with pytest.raises(PromQLError):
        metrics_of(expr)
