"""The Dockerfile, checked without a Docker engine (nothing here can build it): multi-stage on a
slim Python the project supports, a non-root user, every file it copies exists and passes the
.dockerignore, every package the project installs is copied, and what it runs exists.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def build_args() -> dict[str, str]:
    return dict(
        args.split("=", 1) for keyword, args in instructions() if keyword == "ARG" and "=" in args
    )


def copied_sources() -> list[str]:
    """What COPY takes from the build context (not ``--from`` another stage)."""
    sources = []
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            *from_context, _destination = args.split()
            sources += from_context
    return sources


def test_multi_stage_on_a_slim_python_the_project_supports() -> None:
    bases = [args for keyword, args in instructions() if keyword == "FROM"]
    assert len(bases) >= 2
    image = bases[-1].split()[0]
    image = re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m.group(1)], image)
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", image)
    assert match, image
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert required == ">=3.11"
    assert int(match.group(1)) >= 11


def test_the_services_run_as_a_user_not_root() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_what_it_copies_exists_and_passes_the_dockerignore() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"  # an allow-list: only what is named below reaches the build
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for source in copied_sources():
        assert (ROOT / source).exists(), source
        assert source in allowed, f"{source} is copied but .dockerignore leaves it out"


def test_every_package_the_project_installs_is_copied() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    sources = {source.rstrip("/") for source in copied_sources()}
    assert packages <= sources
    assert {"pyproject.toml", project["project"]["readme"]} <= sources
    assert any(k == "RUN" and "pip install ." in a for k, a in instructions())


def test_what_it_runs_exists() -> None:
    commands = [args for keyword, args in final_stage() if keyword == "CMD"]
    module = re.fullmatch(r'\["python", "-m", "([\w.]+)"\]', commands[-1])
    assert module, commands[-1]
    assert importlib.util.find_spec(f"{module.group(1)}.__main__") is not None
    probe = subprocess.run(
        [sys.executable, "-m", "services.core.health", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert "node-agent" in probe.stdout
