"""The layers of DESIGN.md are a contract: ``lint-imports`` (run by ``make lint``) passes on the
tree and fails on a scratch copy given a layer violation, a service importing another, or an
import circle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("events", "projections", "services", "cli", "mcli", "bench", "tests")
LINT = Path(sys.executable).with_name("lint-imports")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", root)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("*.pyc"))
    return root


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def with_import(root: Path, module: str, line: str) -> Path:
    """A copy of the scratch tree whose ``module`` (a path) has ``line`` added."""
    copy = root.parent / f"{root.name}-{abs(hash((module, line)))}"
    shutil.copytree(root, copy)
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}\n")
    return copy


def test_the_tree_keeps_every_contract() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("events/lifecycle.py", "import services.core.store", "Layers"),
        ("projections/billing.py", "import cli.models", "Layers"),
        ("services/scheduler/queue.py", "import services.node_agent.plan", "never import"),
        ("services/core/lease.py", "import services.output.ingest", "never import"),
        ("cli/reads.py", "import cli.sdk.runs", "No import circles"),
        ("services/node_agent/shim/buffer.py", "import services.node_agent.shim.follow", "circles"),
    ],
)
def test_a_violation_breaks_its_contract(
    scratch: Path, module: str, line: str, broken: str
) -> None:
    done = lint(with_import(scratch, module, line))
    assert done.returncode != 0, done.stdout
    assert broken in done.stdout.split("Broken contracts")[1], done.stdout
