"""``mcli admin report``: its arguments are checked before the log is asked, each mistake one
line (usage errors exit 2, a missing archive 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main


@pytest.fixture(autouse=True)
def no_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("cli.main.log_aside", lambda: None)  # global logging stays as it is
    monkeypatch.delenv("RUNPLANE_REDIS_URL", raising=False)
    monkeypatch.delenv("RUNPLANE_EVENT_ARCHIVE", raising=False)
    monkeypatch.setenv("RUNPLANE_HOME", str(tmp_path / "state"))


@pytest.mark.parametrize(
    "args",
    [
        ["billing", "--per", "year"],
        ["billing", "--by", "colour"],
        ["billing", "--since", "yesterday-ish"],
        ["billing", "-o", "xml"],
        ["audit", "--limit", "0"],
        ["audit", "-o", "csv"],
        ["quarterly"],
    ],
)
def test_a_bad_argument_is_a_usage_error(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["admin", "report", *args])
    assert exited.value.code == 2
    assert "error: " in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["billing", "audit"])
def test_a_window_that_ends_before_it_starts_is_one_line(
    kind: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["admin", "report", kind, "--since", "1d", "--until", "2d", "--dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("✗ Error 400: the window ends before it starts")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("kind", ["billing", "audit"])
def test_no_archive_there_is_one_line(
    kind: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["admin", "report", kind, "--dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"✗ Error 400: no archive in {tmp_path / 'nowhere'}: ")
    assert "--dir" in err
    assert len(err.splitlines()) == 1
