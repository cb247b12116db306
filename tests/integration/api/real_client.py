"""The real ``mosaicml-cli`` 0.8.3 in a virtual environment of its own (``.venv-mcli/`` at the
repository's root, ignored by git, kept between sessions), never a dependency of runplane.

``mcli_bin()`` makes it on first use (``python -m venv`` + pip from the package index) and
reuses it after; a stamp file names the version that was installed. When pip cannot reach the
index, the tests that need the client are skipped with pip's reason; any other failure fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

VERSION = "0.8.3"
ROOT = Path(__file__).resolve().parents[3]
VENV = ROOT / ".venv-mcli"
STAMP = VENV / f".installed-mosaicml-cli-{VERSION}"
_OFFLINE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "No matching distribution found",
)


def mcli_bin() -> Path:
    """The real client's ``mcli`` command, installed if it is not yet."""
    binary = VENV / "bin" / "mcli"
    if STAMP.exists() and binary.exists():
        return binary
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
    done = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            f"mosaicml-cli=={VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if any(marker in output for marker in _OFFLINE):
            pytest.skip(
                f"mosaicml-cli {VERSION} could not be installed (no package index): "
                f"{output.strip().splitlines()[-1]}"
            )
        raise AssertionError(f"pip install mosaicml-cli=={VERSION} failed:\n{output}")
    STAMP.touch()
    return binary


def client_env(home: Path, endpoint: str, key: str) -> dict[str, str]:
    """The real client pointed at ``endpoint`` with ``key``, isolated in ``home``
    (``reference/mapi.md`` section 1)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOSAICML_", "MCLI_"))}
    return env | {
        "HOME": str(home),
        "MOSAICML_API_ENDPOINT": endpoint,
        "MOSAICML_API_KEY": key,
        "MCLI_DISABLE_UPGRADE_CHECK": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "COLUMNS": "200",
    }
