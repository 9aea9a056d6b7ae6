# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kiln-installed

.PHONY: run test lint bench crd install system-deps

$(STAMP): pyproject.toml constraints-dev.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints-dev.txt -e ".[trainer,operator,dev]"
	@touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use (prometheus/promtool); installed only when missing and root.
system-deps:
	@bash scripts/system-deps.sh

run: install
	$(VENV)/bin/kiln run examples/digits.yaml

test: install system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -p no:cacheprovider -q

lint: install
	$(VENV)/bin/ruff check .

crd: install
	$(VENV)/bin/kiln crd > crds/trainingjobs.kiln.dev.yaml
	bash scripts/sync-chart-crds.sh

bench: install
	$(PY) bench/trainer_overhead.py
	$(PY) bench/operator_load.py
	$(PY) bench/gpu_loop.py --device cpu --small --output bench/results/gpu_loop_cpu.json
