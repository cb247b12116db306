"""The real ``mosaicml-cli`` in a virtual environment of its own per version, never a dependency
of runplane: 0.8.3 (``reference/mapi.md``) in ``.venv-mcli/``, and 0.7.5 (the version Composer
0.32.1 pins; ``docs/mcli-0.7.5.md``) in ``.venv-mcli-0.7.5/``, both at the repository's root,
ignored by git and kept between sessions.

``mcli_bin()`` (or ``mcli_bin(version=...)``, ``RealClient(version).python()``) makes the
environment on first use (``python -m venv`` + pip from the package index) and reuses it after; a
stamp file names the version that was installed. When pip cannot reach the index, the tests that
need the client are skipped with pip's reason; any other failure fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

VERSION = "0.8.3"
COMPOSER_PIN = "0.7.5"
ROOT = Path(__file__).resolve().parents[3]
_OFFLINE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "No matching distribution found",
)


@dataclass(frozen=True)
class RealClient:
    """One version of the real client and the virtual environment that holds it."""

    version: str = VERSION

    @property
    def venv(self) -> Path:
        # 0.8.3 keeps the folder it always had, so environments made before stay in use.
        return ROOT / (".venv-mcli" if self.version == VERSION else f".venv-mcli-{self.version}")

    @property
    def stamp(self) -> Path:
        return self.venv / f".installed-mosaicml-cli-{self.version}"

    def bin(self) -> Path:
        """The ``mcli`` command, installed if it is not yet."""
        return self._installed() / "bin" / "mcli"

    def python(self) -> Path:
        """The environment's interpreter, for code that imports ``mcli`` as a library."""
        return self._installed() / "bin" / "python"

    def _installed(self) -> Path:
        if self.stamp.exists() and (self.venv / "bin" / "mcli").exists():
            return self.venv
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(self.venv)], check=True, timeout=120
        )
        package = f"mosaicml-cli=={self.version}"
        done = subprocess.run(
            [str(self.venv / "bin" / "python"), "-m", "pip", "install", "--quiet", package],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            output = done.stdout + done.stderr
            if any(marker in output for marker in _OFFLINE):
                pytest.skip(
                    f"{package} could not be installed (no package index): "
                    f"{output.strip().splitlines()[-1]}"
                )
            raise AssertionError(f"pip install {package} failed:\n{output}")
        self.stamp.touch()
        return self.venv


def mcli_bin(version: str = VERSION) -> Path:
    """The real client's ``mcli`` command at ``version``, installed if it is not yet."""
    return RealClient(version).bin()


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


async def run_mcli(mcli: Path, home: Path, endpoint: str, key: str, *args: str) -> tuple[int, str]:
    """The exit code and output (stdout and stderr together) of ``mcli ARGS``."""
    process = await asyncio.create_subprocess_exec(
        str(mcli),
        *args,
        env=client_env(home, endpoint, key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def run_python(python: Path, home: Path, endpoint: str, key: str, *argv: str) -> str:
    """The output of ``python -c ARGV`` with the real client's ``mcli`` importable, run in
    ``home`` (not the repository's root, whose own ``mcli/`` would shadow the client's); it
    must exit 0."""
    process = await asyncio.create_subprocess_exec(
        str(python),
        "-c",
        *argv,
        env=client_env(home, endpoint, key),
        cwd=home,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    text = out.decode()
    print(text)
    assert process.returncode == 0, text
    return text
