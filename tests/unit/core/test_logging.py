"""``configure_aside``: a user's terminal gets no log line, whatever logs it and at what level;
the lines go to the file when its folder exists, and are dropped (silently) when it does not.
Each case runs in a fresh interpreter: logging is configured once per process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = """
import logging, sys
from pathlib import Path
import structlog
from services.core.logging import configure_aside
configure_aside(Path(sys.argv[1]))
structlog.get_logger("projections").warning("projection.skipped", run="r1")
structlog.get_logger("projections").error("fold.failed", run="r1")
logging.getLogger("asyncio").error("Task was destroyed but it is pending!")
structlog.get_logger("projections").info("too.chatty")
print("the command's own output")
"""


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("folder", [True, False], ids=["with-folder", "without-folder"])
def test_log_lines_stay_off_stdout_and_stderr(tmp_path: Path, folder: bool) -> None:
    path = tmp_path / "logs" / "mcli.log"
    if folder:
        path.parent.mkdir()
    done = _run(path)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("the command's own output\n", "")
    if not folder:
        assert not path.parent.exists()
        return
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("projection.skipped", "warning"),
        ("fold.failed", "error"),
        ("Task was destroyed but it is pending!", "error"),
    ]
    assert lines[0]["run"] == "r1"
