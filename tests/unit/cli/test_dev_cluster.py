"""``mcli dev up --shards N --replicas R``: the flags checked (one line, exit 2), the stack's
configuration and what it tells every service (``RUNPLANE_REDIS_CLUSTER``,
``RUNPLANE_APPEND_REPLICAS``), kept in ``stack.json`` and read back; the slots' split."""

from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING

import pytest

from cli.main import build_parser
from cli.stack import LocalStack, StackError, kept_partitions
from cli.stackenv import service_specs
from cli.stackfiles import STACK_FILE, StackConfig, StackFile
from services.core.valkey_cluster import SLOTS, Layout, ranges_text, slot_ranges

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--shards", "0"], "--shards: must be at least 1, got 0"),
        (["--shards", "-2"], "--shards: must be at least 1, got -2"),
        (["--replicas", "-1"], "--replicas: must not be negative, got -1"),
        (["--shards", "two"], "--shards"),
        (["--partitions", "0"], "--partitions: must be at least 1, got 0"),
        (["--partitions", "1025"], "--partitions: must be at most 1024, got 1025"),
    ],
)
def test_a_bad_shape_is_a_usage_error_in_one_line(
    flags: list[str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["dev", "up", *flags])
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert why in last


def test_no_flag_is_one_server_and_the_shape_is_kept_in_stack_json(tmp_path: Path) -> None:
    args = build_parser().parse_args(["dev", "up"])
    assert (args.shards, args.replicas) == (None, None)
    assert StackConfig().server_names() == ["valkey"]
    assert not StackConfig().is_cluster
    config = StackConfig(shards=3, replicas=1)
    assert config.server_names() == [f"valkey-{i}" for i in range(6)]
    assert config.append_replicas == 1
    assert StackConfig(shards=2, replicas=2).append_replicas == 1
    assert StackConfig(shards=1, replicas=0).append_replicas == 0
    StackFile(config, "valkey-server", 7000, 8000, []).save(tmp_path)
    loaded = StackFile.load(tmp_path)
    assert loaded is not None
    assert (loaded.config.shards, loaded.config.replicas) == (3, 1)


def test_a_stack_json_of_before_clusters_reads_as_one_server(tmp_path: Path) -> None:
    StackFile(StackConfig(), "valkey-server", 7000, 8000, []).save(tmp_path)
    saved = json.loads((tmp_path / STACK_FILE).read_text())
    del saved["config"]["shards"], saved["config"]["replicas"]
    (tmp_path / STACK_FILE).write_text(json.dumps(saved))
    loaded = StackFile.load(tmp_path)
    assert loaded is not None
    assert not loaded.config.is_cluster


def test_every_service_of_a_cluster_stack_is_told_so(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    stack.config = StackConfig(nodes=1, shards=3, replicas=1)
    specs = service_specs(stack)
    assert {spec.name for spec in specs} >= {"scheduler", "api", "node-0"}
    for spec in specs:
        assert spec.env["RUNPLANE_REDIS_CLUSTER"] == "true"
        assert spec.env["RUNPLANE_APPEND_REPLICAS"] == "1"
    stack.config = StackConfig(nodes=1)
    assert not any("RUNPLANE_REDIS_CLUSTER" in spec.env for spec in service_specs(stack))
    assert not any("RUNPLANE_PARTITIONS" in spec.env for spec in service_specs(stack))


def test_every_service_and_the_operator_get_the_logs_partitions(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    stack.config = StackConfig(nodes=1, shards=3, replicas=1, partitions=4)
    assert {spec.env["RUNPLANE_PARTITIONS"] for spec in service_specs(stack)} == {"4"}
    settings = stack.operator_settings()
    assert (settings.partitions, settings.redis_cluster, settings.append_replicas) == (4, True, 1)


def test_a_kept_log_of_other_partitions_is_refused_in_one_line(tmp_path: Path) -> None:
    StackFile(StackConfig(partitions=4), "valkey-server", 7000, 8000, []).save(tmp_path)
    assert kept_partitions(tmp_path) == 4
    with pytest.raises(StackError) as refused:
        LocalStack(tmp_path).up(StackConfig(partitions=2))
    assert "has 4 partitions" in str(refused.value)
    assert "`mcli dev up --partitions 4`" in str(refused.value)
    assert kept_partitions(tmp_path / "elsewhere") is None


@pytest.mark.parametrize("shards", [1, 2, 3, 5, 16])
def test_the_slots_split_evenly_and_whole(shards: int) -> None:
    ranges = slot_ranges(shards)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == SLOTS - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    sizes = [b - a + 1 for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert ranges_text(((0, 5460), (7, 7))) == "0-5460,7"


def test_a_layout_draws_two_distinct_ports_a_node_and_is_kept(tmp_path: Path) -> None:
    layout = Layout.new(3, 1, taken={1})
    assert layout.size == 6
    ports = [*layout.ports, *layout.buses]
    assert len(set(ports)) == 12
    assert 1 not in ports
    layout.save(tmp_path)
    assert Layout.load(tmp_path) == layout
    with pytest.raises(ValueError, match="1 shard or more"):
        Layout.new(0, 1)
