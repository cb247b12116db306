"""The CLI's pure pieces: argument types, overrides, log-selection rules, error lines."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli.commands.common import hours, moment, non_negative, statuses
from cli.criteria import moment_ms, status_set
from cli.errors import UsageError
from cli.logsel import check_args
from cli.main import COMMANDS, build_parser, main
from cli.submit import with_overrides
from events.config import RunConfig
from events.status import RunStatus

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_times_are_dates_or_times_ago() -> None:
    assert moment("2h", NOW) == int(NOW.timestamp() * 1000) - 2 * 3_600_000
    assert moment("30m", NOW) == int(NOW.timestamp() * 1000) - 30 * 60_000
    assert moment("2026-11-24T10:00+00:00") == int(
        datetime(2026, 11, 24, 10, tzinfo=UTC).timestamp() * 1000
    )
    with pytest.raises(argparse.ArgumentTypeError, match="time ago"):
        moment("yesterday-ish")


def test_numbers_and_statuses_are_checked() -> None:
    assert non_negative("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="negative"):
        non_negative("-1")
    with pytest.raises(argparse.ArgumentTypeError, match="positive"):
        hours("0")
    assert statuses("running,Completed, failed") == {
        RunStatus.RUNNING,
        RunStatus.COMPLETED,
        RunStatus.FAILED,
    }
    with pytest.raises(argparse.ArgumentTypeError, match="unknown status 'sleeping'"):
        statuses("sleeping")


def test_the_sdk_takes_the_times_and_statuses_the_cli_takes() -> None:
    """One rule (``cli.criteria``) for ``--after``/``--status`` and ``get_runs(after=,
    statuses=)``: the same strings, plus datetimes (naive ones in local time, as typed dates
    are) and lists; a bad value is a ValueError (the CLI's usage error says the same)."""
    for text in ("2h", "30m", "1.5d", "2026-11-24", "2026-11-24T10:00+00:00"):
        assert moment_ms(text, NOW) == moment(text, NOW)
    assert moment_ms(NOW) == int(NOW.timestamp() * 1000)
    assert moment_ms(datetime(2026, 11, 24, 10)) == moment("2026-11-24T10:00")
    with pytest.raises(ValueError, match="time ago") as refused:
        moment_ms("yesterday-ish")
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(str(refused.value))):
        moment("yesterday-ish")
    running = frozenset({RunStatus.RUNNING})
    assert status_set("RUNNING") == status_set(RunStatus.RUNNING) == running
    assert status_set(["running", RunStatus.QUEUED]) == {RunStatus.RUNNING, RunStatus.QUEUED}
    assert status_set("running,queued") == statuses("running,queued")
    with pytest.raises(ValueError, match="unknown status 'bogus'"):
        status_set(["running", "bogus"])


def test_overrides_replace_fields_and_sections() -> None:
    config = RunConfig(name="a", image="i", command="c", compute={"cluster": "x", "gpus": 1})
    changed = with_overrides(
        config,
        {"name": "b", "compute.gpus": 8, "compute.nodes": None, "scheduling.priority": "low"},
    )
    assert (changed.name, changed.compute, changed.scheduling) == (
        "b",
        {"cluster": "x", "gpus": 8},
        {"priority": "low"},
    )
    assert config.compute == {"cluster": "x", "gpus": 1}  # the original is left alone


def test_rank_and_failed_are_mutually_exclusive() -> None:
    with pytest.raises(UsageError, match="mutually exclusive"):
        check_args(rank=1, failed=True, resumption=None, prev=False)
    with pytest.raises(UsageError, match="mutually exclusive"):
        check_args(rank=None, failed=False, resumption=1, prev=True)
    check_args(rank=None, failed=True, resumption=0, prev=False)


def test_each_command_is_registered_by_the_group_the_table_names() -> None:
    for group in dict.fromkeys(COMMANDS.values()):
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"cli.commands.{group}").register(subparsers)
        assert list(subparsers.choices) == [w for w, g in COMMANDS.items() if g == group], group
    every = build_parser(["--help"])._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(every or ()) == list(COMMANDS)


def test_a_command_loads_its_own_group_only() -> None:
    code = (
        "import json, sys\n"
        "from cli.main import build_parser\n"
        "build_parser(['get', 'runs']).parse_args(['get', 'runs'])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cli.commands.'))))\n"
        "print(json.dumps([m for m in ('graphql', 'redis', 'cli.stack') if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    groups, heavy = (json.loads(line) for line in done.stdout.splitlines())
    # get registers `get secrets` too; common is every group's helpers
    assert groups == ["cli.commands.common", "cli.commands.get", "cli.commands.secrets"]
    assert heavy == ["redis"]  # projections.query's client, for now; not graphql, not the stack


@pytest.mark.parametrize(
    "argv",
    [
        ["logs", "r", "--rank", "1", "--failed"],
        ["run"],
        ["run", "-f", "a", "--clone", "b"],
        ["get", "runs", "-o", "yaml"],
        ["stop"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2


def test_no_runplane_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("cli.main.log_aside", lambda: None)  # global logging stays as it is
    monkeypatch.delenv("RUNPLANE_REDIS_URL", raising=False)
    monkeypatch.setenv("RUNPLANE_HOME", str(tmp_path))
    assert main(["get", "runs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("✗ Error 503: ")
    assert "mcli dev up" in err
    assert len(err.splitlines()) == 1
