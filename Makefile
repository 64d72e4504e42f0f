# geoetl developer entry points (GNU make). `make help` lists them.
#
# `make deps` installs only what is missing or out of date: stamp files record the requirements
# and package-lock.json that were last installed, so a second run does nothing.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.geoetl-requirements.stamp
NODE_RUNTIME := devstack/node
NODE_RUNTIME_STAMP := $(NODE_RUNTIME)/node_modules/.geoetl-package-lock.stamp
NODE_STAMP := node_modules/.geoetl-package-lock.stamp
# Installs what the machine lacks (apt-get, as root) and keeps .venv healthy; standard library only.
BOOTSTRAP := $(PYTHON) devstack/bootstrap.py
PYTEST_FLAGS ?= --durations=10
BENCH_ARGS ?=

.PHONY: help deps system-deps venv python-deps node-deps run up down status migrate test lint bench clean distclean

help:
	@echo "make deps     install what is missing: system packages (apt-get, as root), .venv, Node.js runtime + Azurite"
	@echo "make run      bring the local stack up, run the demo job, print it, stop what it started"
	@echo "make up       start Postgres (if none), Azurite and the local Functions host on :7071 (detached)"
	@echo "make down     stop what 'make up' started"
	@echo "make status   show what is running"
	@echo "make migrate  apply database migrations"
	@echo "make test     run the test suite (starts its own Azurite, uses a throwaway database)"
	@echo "make lint     ruff + mypy"
	@echo "make bench    throughput benchmark (bench/throughput.py)"
	@echo "make clean    stop the stack, remove .stack/ and caches; 'make distclean' also removes .venv and node_modules"

deps: system-deps python-deps node-deps

# Debian/Ubuntu packages behind: .venv (python3-venv), npm, Chromium (the dashboard's browser test),
# the PostgreSQL server binaries and PostGIS for them. A remote POSTGRES_HOST needs no local server.
system-deps:
	@$(BOOTSTRAP) system python-venv npm chromium gdal $(if $(filter-out 127.0.0.1 localhost ::1,$(POSTGRES_HOST)),,postgres postgis)

# A missing, half-made or foreign .venv is (re)made; the requirements stamp lives inside it.
venv:
	@$(BOOTSTRAP) system python-venv
	@$(BOOTSTRAP) venv $(VENV)

python-deps: $(PY_STAMP)

node-deps: $(NODE_STAMP)

# Then the project itself, editable and without dependencies (the requirements pin them), for the
# `geoetl` console script (pyproject.toml [project.scripts]).
$(PY_STAMP): requirements.txt requirements-dev.txt pyproject.toml | venv
	$(PY) -m pip install --disable-pip-version-check --no-input -q -r requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check --no-input -q --no-deps -e .
	@touch $@

# Two steps: the machine's npm installs the pinned Node.js runtime (+ npm) into devstack/node; that
# runtime then installs Azurite, so Azurite's engine requirement (Node >= 22) is met and checked.
# npm ci wipes node_modules first, so each stamp lives inside its node_modules and goes away with it.
$(NODE_RUNTIME_STAMP): $(NODE_RUNTIME)/package.json $(NODE_RUNTIME)/package-lock.json
	@$(BOOTSTRAP) system npm
	@echo "geoetl: installing the pinned Node.js runtime into $(NODE_RUNTIME) (Azurite needs Node.js >= 22)"
	cd $(NODE_RUNTIME) && npm ci --no-audit --no-fund
	@touch $@

$(NODE_STAMP): package.json package-lock.json $(NODE_RUNTIME_STAMP)
	@$(BOOTSTRAP) npm-ci
	@touch $@

# Offline infrastructure checkers for tests/unit/test_infra.py (checkov, pycep-parser), in their own
# venv: their pins conflict with the app's. Reinstalled whole when requirements-infra.txt changes.
INFRA_VENV := .stack/infra-venv
INFRA_STAMP := $(INFRA_VENV)/.geoetl-infra-requirements.stamp

.PHONY: infra-tools
infra-tools: $(INFRA_STAMP)

$(INFRA_STAMP): requirements-infra.txt | venv
	rm -rf $(INFRA_VENV)
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --disable-pip-version-check --no-input -q -r requirements-infra.txt
	@touch $@

run: deps
	$(PY) -m devstack run

up: deps
	$(PY) -m devstack up

down: python-deps
	$(PY) -m devstack down

status: python-deps
	$(PY) -m devstack status

migrate: python-deps
	$(PY) -m devstack migrate

# pytest's exit code 5 means "no tests collected": a failure here, never a silent pass.
# The exit code is also left in .stack/pytest-exit-code for .ci/run.
test: deps infra-tools
	@mkdir -p .stack; rm -f .stack/pytest-exit-code; set +e; \
	$(PY) -m pytest $(PYTEST_FLAGS); rc=$$?; echo $$rc > .stack/pytest-exit-code; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED - pytest collected no tests (exit code 5)" >&2; fi; \
	exit $$rc

# Both linters always run; the target fails when either does.
lint: python-deps
	@rc=0; \
	echo "ruff check ."; $(VENV)/bin/ruff check . || rc=1; \
	echo "mypy ."; $(VENV)/bin/mypy . || rc=1; \
	exit $$rc

bench: deps
	$(PY) -m bench.throughput $(BENCH_ARGS)

# Stop the stack and every project-local Postgres (data relocated out of the checkout included) before
# deleting .stack/.
clean:
	@if [ -x $(PY) ]; then $(PY) -m devstack clean; fi
	rm -rf .stack .pytest_cache .mypy_cache .ruff_cache bench/out
	find . -path ./.venv -prune -o -path '*/node_modules' -prune -o -name __pycache__ -type d -print0 | xargs -0 -r rm -rf

distclean: clean
	rm -rf $(VENV) node_modules $(NODE_RUNTIME)/node_modules
