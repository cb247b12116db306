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

Pure: no IO.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from services.node_agent import integrations

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


def script(steps: list[integrations.Step]) -> str:
    """An integration's steps as one shell script that stops at the first failure."""
    lines = ["set -e", f"mkdir -p {shlex.quote(str(WORKSPACE))}"]
    for step in steps:
        command = shlex.join(step.argv)
        if step.creates is not None:
            command = f"[ -e {shlex.quote(str(step.creates))} ] || {command}"
        lines += [f"cd {shlex.quote(str(step.cwd))}", command]
    return "\n".join(lines) + "\n"
