#!/usr/bin/env bash
# Composer 0.32.1 on the CPU in its own virtual environment (default .venv-composer/ at the
# repository's root, ignored by git; VENV=... for another place). Never a dependency of runplane.
#
# Composer 0.32.1 pins torch<2.7.1 and torchvision<0.22.1, whose Linux wheels are CUDA builds
# of several GB from the package index. This takes torch 2.14.1 and torchvision 0.29.1 instead
# (the pair this machine keeps on disk; CUDA builds, but they run on the CPU), installs
# Composer without its pins, then the rest of what Composer requires, read from its own
# metadata, torch and torchvision left out.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-composer}
STAMP="$VENV/.installed-composer-0.32.1"
[ -e "$STAMP" ] && exit 0
python3 -m venv --clear "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet)
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
"${pip[@]}" --no-deps composer==0.32.1
mapfile -t deps < <("$VENV/bin/python" - <<'PY'
import re
from importlib.metadata import requires

for requirement in requires("composer") or []:
    spec, _, marker = requirement.partition(";")
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower()
    if "extra ==" not in marker and name not in {"torch", "torchvision"}:
        print(spec.strip())
PY
)
"${pip[@]}" "${deps[@]}"
touch "$STAMP"
