"""Integrations as the commands that carry them out."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.node_agent.errors import IntegrationError
from services.node_agent.integrations import (
    Context,
    Step,
    git_url,
    repo_name,
    steps_for,
)

WS = Path("/data/ranks/r/0/0/workspace")
VENV = Path("/data/ranks/r/0/0/venv")
PY = "/usr/bin/python3"
PIP = (str(VENV / "bin" / "python"), "-m", "pip", "install")
MAKE_VENV = Step((PY, "-m", "venv", "--system-site-packages", str(VENV)), WS, creates=VENV)


def ctx(euid: int = 1000) -> Context:
    return Context(workspace=WS, venv=VENV, python=PY, euid=euid)


@pytest.mark.parametrize(
    ("repo", "options", "url"),
    [
        ("mosaicml/benchmarks", {}, "https://github.com/mosaicml/benchmarks"),
        ("mosaicml/benchmarks", {"ssh_clone": True}, "git@github.com:mosaicml/benchmarks.git"),
        ("org/repo", {"host": "gitlab.com"}, "https://gitlab.com/org/repo"),
        ("https://example.com/a/b.git", {}, "https://example.com/a/b.git"),
        ("git@example.com:a/b.git", {}, "git@example.com:a/b.git"),
        ("/srv/git/hello.git", {}, "/srv/git/hello.git"),
        ("./hello", {}, "./hello"),
        ("../repos/x", {}, "../repos/x"),
    ],
)
def test_git_url(repo: str, options: dict[str, object], url: str) -> None:
    assert git_url(repo, **options) == url  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("repo", "name"),
    [("mosaicml/benchmarks", "benchmarks"), ("/srv/hello.git/", "hello"), ("git@h:a/b.git", "b")],
)
def test_repo_name(repo: str, name: str) -> None:
    assert repo_name(repo) == name


def test_git_repo_at_a_branch_into_its_name() -> None:
    integration = {"integration_type": "git_repo", "git_repo": "org/repo", "git_branch": "dev"}
    assert steps_for(integration, ctx()) == [
        Step(
            ("git", "clone", "--branch", "dev", "--", "https://github.com/org/repo", f"{WS}/repo"),
            WS,
        )
    ]


def test_git_repo_at_a_commit_into_a_path_then_pip_install() -> None:
    integration = {
        "integration_type": "git_repo",
        "git_repo": "/srv/hello.git",
        "git_commit": "abc123",
        "path": "src/hello",
        "pip_install": "-e .[all]",
    }
    dest = WS / "src" / "hello"
    assert steps_for(integration, ctx()) == [
        Step(("git", "clone", "--", "/srv/hello.git", str(dest)), WS),
        Step(("git", "-c", "advice.detachedHead=false", "checkout", "abc123", "--"), dest),
        MAKE_VENV,
        Step((*PIP, "-e", ".[all]"), dest),
    ]


def test_pip_packages_into_the_ranks_virtual_environment() -> None:
    integration = {"integration_type": "pip_packages", "packages": ["numpy>=1", "rich"]}
    assert steps_for(integration, ctx()) == [MAKE_VENV, Step((*PIP, "numpy>=1", "rich"), WS)]
    upgrade = {"integration_type": "pip_packages", "packages": "numpy rich", "upgrade": True}
    assert steps_for(upgrade, ctx())[1] == Step((*PIP, "--upgrade", "numpy", "rich"), WS)


def test_apt_packages_as_root() -> None:
    integration = {"integration_type": "apt_packages", "packages": ["htop"]}
    steps = steps_for(integration, ctx(euid=0))
    assert steps[-1] == Step(("apt-get", "install", "-y", "--no-install-recommends", "htop"), WS)


def test_apt_packages_are_refused_with_a_reason_when_not_root() -> None:
    integration = {"integration_type": "apt_packages", "packages": ["htop"]}
    with pytest.raises(IntegrationError, match=r"apt_packages needs root.*uid 1000.*htop"):
        steps_for(integration, ctx(euid=1000))


@pytest.mark.parametrize(
    ("integration", "message"),
    [
        ({"integration_type": "wandb"}, "unknown integration_type 'wandb'"),
        ({}, "unknown integration_type '<missing integration_type>'"),
        ({"integration_type": "git_repo"}, "git_repo: 'git_repo' is required"),
        ({"integration_type": "git_repo", "git_repo": ["a"]}, "'git_repo' must be a string"),
        ({"integration_type": "pip_packages"}, "'packages' must be a non-empty list"),
        ({"integration_type": "pip_packages", "packages": []}, "'packages' must be a non-empty"),
    ],
)
def test_a_bad_integration_is_refused_clearly(integration: dict[str, object], message: str) -> None:
    with pytest.raises(IntegrationError, match=message):
        steps_for(integration, ctx())
