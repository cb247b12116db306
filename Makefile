# runplane: one target per habit. Everything installs into .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint format bench demo clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("runplane needs Python 3.11 or newer (set PYTHON=...)" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# bench.scale at a tenth of the issue's 5,000 nodes x 50,000 runs: the full size (plain
# `python -m bench.scale`) takes several minutes on a 2-core machine, this one about half a minute.
# bench.soak at a tenth of its 10,000,000 events: the full soak takes about 25 minutes here.
bench: $(STAMP)
	$(PY) -m bench.log
	$(PY) -m bench.cluster
	$(PY) -m bench.placement
	$(PY) -m bench.logs
	$(PY) -m bench.lifecycle
	$(PY) -m bench.memory
	$(PY) -m bench.api
	$(PY) -m bench.console
	$(PY) -m bench.projections --events 100000
	$(PY) -m bench.report
	$(PY) -m bench.soak --events 1000000
	$(PY) -m bench.scale --nodes 500 --runs 5000
	$(PY) -m bench.fencing
	@if command -v podman >/dev/null; then $(PY) -m bench.containers; \
	else echo "bench.containers: skipped: no podman (apt-get install podman runc docker-registry)"; fi

demo: $(STAMP)
	$(PY) -m cli.demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
