"""The options ``mcli run`` and ``mcli update run`` share: one set of priority names (mcli's),
accepted and shown the same everywhere, and every option documented with its unit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cli.client import ClientError
from cli.main import build_parser
from cli.render import utilization
from cli.sdk.clusters import Cluster, ClusterUtilization, RunUtilization
from cli.sdk.runs import update_run
from events.config import RunConfig, to_spec
from events.spec import PRIORITIES, PRIORITY_RANK
from tests.unit.cli.test_render import render

NOW = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
COMMANDS = (["run", "-f", "x.yaml"], ["update", "run", "x"])


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*argv, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", COMMANDS)
def test_every_priority_name_is_accepted_by_the_cli_and_nothing_else(argv: list[str]) -> None:
    for name in PRIORITIES:
        assert build_parser().parse_args([*argv, "--priority", name]).priority == name
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*argv, "--priority", "medium"])
    assert exited.value.code == 2


def test_the_yaml_and_the_sdk_take_the_same_names() -> None:
    assert set(PRIORITIES) == set(PRIORITY_RANK) == {"auto", "low", "lowest"}
    for name in PRIORITIES:
        config = RunConfig(
            name="a",
            image="i",
            command="c",
            compute={"cluster": "c"},
            scheduling={"priority": name},
        )
        assert to_spec(config)[0].scheduling.priority == name
    with pytest.raises(ClientError, match="priority must be one of auto, low, lowest"):
        update_run("some-run", priority="medium")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", PRIORITIES)
def test_util_shows_the_name_a_user_types(name: str) -> None:
    line = RunUtilization("r-abcdef", "u@x", 8, NOW - timedelta(hours=1), name, False, NOW)
    cluster = Cluster("c1", ClusterUtilization(active_runs_by_user=[line]))
    shown = render(utilization([cluster], NOW, hide_users=False))
    row = next(row for row in shown.splitlines() if row.startswith("r-abcdef"))
    assert row.split()[-1] == name


def test_update_run_help_documents_every_option_with_its_unit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shown = _help(["update", "run"], capsys)
    for option in (
        "--priority {auto,low,lowest} the queue's order",
        "--preemptible, --no-preemptible a run of higher priority may stop it",
        "--max-retries N, --max_retries N times a resumption",
        "--max-duration HOURS, --max_duration HOURS hours a resumption may run",
        "--retry-on-system-failure, --no-retry-on-system-failure, --watchdog, --no-watchdog retry",
        "RUN the run's name",
    ):
        assert option in shown, option
    assert _help(["run"], capsys).count("--max-duration HOURS, --max_duration HOURS hours") == 1
