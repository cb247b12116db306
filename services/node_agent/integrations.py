"""A run's integrations as the commands that carry them out, in order, before the command.

- ``git_repo``: ``git clone`` of ``git_repo`` (a URL or a local path as given; mcli's short
  form ``org/repo`` means ``https://<host>/org/repo``, ``host`` defaulting to github.com, or
  ``git@<host>:org/repo.git`` with ``ssh_clone``) at ``git_branch``, then a checkout of
  ``git_commit`` if given, into ``path`` (relative to the workspace) or the repository's name;
  then ``pip install <pip_install>`` in the clone, into the rank's virtual environment.
- ``pip_packages``: ``pip install [--upgrade] <packages>`` into the rank's own virtual
  environment, created with ``--system-site-packages`` the first time one is needed.
- ``apt_packages``: ``apt-get install -y`` as root; refused with a clear reason otherwise.

Pure: the caller passes the workspace, the interpreter and the uid the tools run as; a bad
integration raises ``IntegrationError`` with a message the user can act on.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from events.spec import INTEGRATION_KEYS
from services.node_agent.errors import IntegrationError

KNOWN = tuple(INTEGRATION_KEYS)
_SHORT_FORM = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


class Context(NamedTuple):
    workspace: Path
    venv: Path  # the rank's virtual environment (created by the first step that needs it)
    python: str  # the interpreter that creates it
    euid: int  # the uid its tools run as


class Step(NamedTuple):
    argv: tuple[str, ...]
    cwd: Path
    #: Skip the step when this path exists already (the virtual environment).
    creates: Path | None = None


def integration_type(integration: Mapping[str, Any]) -> str:
    return str(integration.get("integration_type", "")) or "<missing integration_type>"


def steps_for(integration: Mapping[str, Any], ctx: Context) -> list[Step]:
    kind = integration_type(integration)
    if kind == "git_repo":
        return _git_repo(integration, ctx)
    if kind == "pip_packages":
        return _pip_packages(integration, ctx)
    if kind == "apt_packages":
        return _apt_packages(integration, ctx)
    raise IntegrationError(
        f"unknown integration_type {kind!r}: this node-agent carries out {', '.join(KNOWN)}"
    )


def git_url(repo: str, *, ssh_clone: bool = False, host: str = "github.com") -> str:
    """The URL to clone: mcli's ``org/repo`` short form expanded, anything else as given."""
    if _SHORT_FORM.fullmatch(repo) and not repo.startswith("."):
        return f"git@{host}:{repo}.git" if ssh_clone else f"https://{host}/{repo}"
    return repo


def repo_name(repo: str) -> str:
    """The directory ``git clone`` would pick: the last path component, without ``.git``."""
    last = re.split(r"[/:]", repo.rstrip("/"))[-1]
    return last.removesuffix(".git") or "repo"


def venv_step(ctx: Context) -> Step:
    argv = (ctx.python, "-m", "venv", "--system-site-packages", str(ctx.venv))
    return Step(argv, ctx.workspace, creates=ctx.venv)


def pip_install(ctx: Context, args: list[str], cwd: Path) -> Step:
    return Step((str(ctx.venv / "bin" / "python"), "-m", "pip", "install", *args), cwd)


def _git_repo(integration: Mapping[str, Any], ctx: Context) -> list[Step]:
    repo = _text(integration, "git_repo", required=True)
    branch = _text(integration, "git_branch")
    commit = _text(integration, "git_commit")
    host = _text(integration, "host") or "github.com"
    url = git_url(repo, ssh_clone=bool(integration.get("ssh_clone", False)), host=host)
    dest = ctx.workspace / (_text(integration, "path") or repo_name(repo))
    clone = ["git", "clone"]
    if branch:
        clone += ["--branch", branch]
    steps = [Step((*clone, "--", url, str(dest)), ctx.workspace)]
    if commit:
        steps.append(
            Step(("git", "-c", "advice.detachedHead=false", "checkout", commit, "--"), dest)
        )
    pip_args = _text(integration, "pip_install")
    if pip_args:
        steps += [venv_step(ctx), pip_install(ctx, shlex.split(pip_args), dest)]
    return steps


def _pip_packages(integration: Mapping[str, Any], ctx: Context) -> list[Step]:
    packages = _packages(integration)
    upgrade = ["--upgrade"] if integration.get("upgrade", False) else []
    return [venv_step(ctx), pip_install(ctx, [*upgrade, *packages], ctx.workspace)]


def _apt_packages(integration: Mapping[str, Any], ctx: Context) -> list[Step]:
    packages = _packages(integration)
    if ctx.euid != 0:
        raise IntegrationError(
            f"apt_packages needs root, and this rank runs as uid {ctx.euid}: install "
            f"{' '.join(packages)} on the node, or use pip_packages"
        )
    return [
        Step(("apt-get", "update", "-q"), ctx.workspace),
        Step(("apt-get", "install", "-y", "--no-install-recommends", *packages), ctx.workspace),
    ]


def _packages(integration: Mapping[str, Any]) -> list[str]:
    packages = integration.get("packages")
    if isinstance(packages, str):
        packages = packages.split()
    if (
        not isinstance(packages, list)
        or not packages
        or not all(isinstance(p, str) and p for p in packages)
    ):
        raise IntegrationError(
            f"{integration_type(integration)}: 'packages' must be a non-empty list of names"
        )
    return packages


def _text(integration: Mapping[str, Any], field: str, *, required: bool = False) -> str:
    value = integration.get(field)
    if value is None or value == "":
        if required:
            raise IntegrationError(f"{integration_type(integration)}: {field!r} is required")
        return ""
    if not isinstance(value, str | int | float):
        raise IntegrationError(f"{integration_type(integration)}: {field!r} must be a string")
    return str(value)
