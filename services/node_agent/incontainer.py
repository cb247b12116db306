"""A rank inside its image, whatever runs the container (a Pod's, podman's): where its files
are, how its command starts, and its integrations as shell scripts.

The layout (the ``kubernetes`` and ``container`` executors keep it alike, so a run moves from
one to the other unchanged):

- ``/runplane`` is shared by the integrations' containers and the command's: ``workspace/``
  (the command's cwd, where ``git_repo`` clones) and ``venv/`` (the rank's virtual
  environment, made by the first integration that needs one, as on the ``process`` executor);
- ``/etc/runplane/parameters.yaml``: the run's parameters (``PARAMETERS`` names it);
- ``/var/run/runplane/token``: the rank's run token, read-only (``MOSAICML_ACCESS_TOKEN_FILE``
  names it); never in the container's spec or environment.

The command runs under ``bash -c`` (``sh -c`` if the image has no bash), as on the ``process``
executor, through ``exec``, so it receives SIGTERM itself and its exit is the container's.

An integration runs in a container of its own, before the command's (an init container, an
engine's container run to its end): ``apt_packages`` cannot carry over from one container to
the next, so it is refused (``BadIntegration``): bake system packages into the image.

Pure: no IO.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from services.node_agent import integrations
from services.node_agent.errors import IntegrationError, NodeAgentError

SHARED = PurePosixPath("/runplane")
WORKSPACE = SHARED / "workspace"
VENV = SHARED / "venv"
PARAMETERS_DIR = PurePosixPath("/etc/runplane")
PARAMETERS_FILE = PARAMETERS_DIR / "parameters.yaml"
TOKEN_DIR = PurePosixPath("/var/run/runplane")
TOKEN_FILE = TOKEN_DIR / "token"
#: The variable that carries the run's command to the prelude (a shell string, as written).
COMMAND_VARIABLE = "RUNPLANE_COMMAND"

#: The command's prelude: the rank's virtual environment first on the PATH when an integration
#: made one, then the command itself (``exec``: signals go to it, its exit is the container's).
PRELUDE = f"""\
mkdir -p {WORKSPACE} && cd {WORKSPACE} || exit 1
if [ -x {VENV}/bin/python ]; then
  export VIRTUAL_ENV={VENV} PATH="{VENV}/bin:$PATH"
fi
if command -v bash >/dev/null 2>&1; then exec bash -c "${COMMAND_VARIABLE}"; fi
exec sh -c "${COMMAND_VARIABLE}"
"""


class BadIntegration(NodeAgentError):
    """An integration this executor cannot carry out as written. Permanent."""

    def __init__(self, index: int, integration_type: str, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.integration_type = integration_type


def integration_script(
    index: int, integration: Mapping[str, Any], *, python: str, executor: str
) -> str:
    """The script of integration ``index`` in its own container, run by ``python`` (the
    image's interpreter); raises ``BadIntegration`` for one that cannot run so."""
    kind = integrations.integration_type(integration)
    if kind == "apt_packages":
        raise BadIntegration(
            index,
            kind,
            f"apt_packages: on the {executor} executor an integration runs in a container "
            "of its own, and system packages do not carry over to the command's: install "
            "them in the image",
        )
    ctx = integrations.Context(workspace=Path(WORKSPACE), venv=Path(VENV), python=python, euid=0)
    try:
        return script(integrations.steps_for(integration, ctx))
    except IntegrationError as exc:
        raise BadIntegration(index, kind, str(exc)) from exc


def integration_env(env_variables: Mapping[str, str]) -> dict[str, str]:
    """An integration's environment: the run's variables; a private repository fails
    instead of waiting for a password."""
    return {**env_variables, "GIT_TERMINAL_PROMPT": "0"}


def script(steps: list[integrations.Step]) -> str:
    """An integration's steps as one shell script that stops at the first failure."""
    lines = ["set -e", f"mkdir -p {shlex.quote(str(WORKSPACE))}"]
    for step in steps:
        command = shlex.join(step.argv)
        if step.creates is not None:
            command = f"[ -e {shlex.quote(str(step.creates))} ] || {command}"
        lines += [f"cd {shlex.quote(str(step.cwd))}", command]
    return "\n".join(lines) + "\n"
