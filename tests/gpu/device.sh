#!/usr/bin/env bash
# The GPU suite on a GPU machine that has no network (the device machine): python3 there holds
# torch, pytest and pytest-timeout but none of runplane's runtime dependencies, so they come
# along as cp312 wheels in .whl/ (ignored by git) and are installed into /tmp/site first;
# nvidia-ml-py (pure Python, py3-none-any) among them: the agent finds its GPUs through NVML.
#
# From the repo root: bash tests/gpu/device.sh; the log is written to $OUT/gpu.log.
# Exits with pytest's code.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit
OUT=${OUT:-/tmp/runplane-gpu}
mkdir -p "$OUT"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit
# The stack's services run as `python3 -m services.<name>` and inherit this: both the wheels
# and the repo root (events, services, cli) resolve for them, and for the ranks' python3.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# Only the plugins the suite needs: the image's own (xdist, cov, hypothesis, ...), of versions
# nobody pinned, stay out of a run whose warnings are errors.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1

# As root, the agents run ranks as uids of their own: they must reach python3 and this copy.
bash .ci/ranks-reach "$(python3 -c "import sys; print(sys.executable)")" "$PWD/Makefile" /tmp/site

nvidia-smi -L
python3 -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'
python3 -m pytest -q -p no:cacheprovider -p pytest_asyncio.plugin -p pytest_timeout \
    tests/gpu -rA --timeout 240 2>&1 | tee "$OUT/gpu.log"
exit "${PIPESTATUS[0]}"
