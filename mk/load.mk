# Load, lag and benchmark targets (issue 4). Included by the main Makefile (-include mk/*.mk).
.PHONY: lag load bench bench-quick bench-versus soak
LAG_ARGS ?=
LOAD_ARGS ?=
BENCH_ARGS ?=
# e.g. VERSUS_ARGS='--rounds 5 --seconds 4 --concurrency 1 16 64'
VERSUS_ARGS ?=
# Rate, length and seed default in load/soak/plan.py; e.g. SOAK_ARGS='--seed 7 --json .run/soak.json'
SOAK_ARGS ?=

lag: venv ## @inspect Per-partition committed/end offsets and lag of the consumer group, and KEDA's verdict (LAG_ARGS=--json)
	$(PY) -m tools.kafka_lag $(LAG_ARGS)

load: venv ## @load Bounded purchase load via :8080 (Host: purchase.local) with a lag/replica timeline and a PNG chart of it (LOAD_ARGS=--help)
	$(PY) -m load.scale $(LOAD_ARGS)

bench: venv ## @load Benchmark on its own local servers vs raw baselines (minutes; not in make test) -> bench-results.json
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: venv ## @load The benchmark with small sizes: a smoke run in about two minutes
	$(PY) -m bench.run --quick $(BENCH_ARGS)

bench-versus: venv ## @load Issue 12 side by side: the original Node service (Express + kafkajs) vs buy direct vs buy via the gateway (Envoy) and, once built, via Traefik; hey in alternating rounds (~2-3 min; needs go, node, npm; VERSUS_ARGS=--help) -> .run/bench/versus.json
	$(PY) -m bench.versus $(VERSUS_ARGS)

soak: venv ## @load All faults at once: the long purchase soak on its own servers under a seeded, overlapping chaos plan, then exact counts (~13 min; not in make test; SOAK_ARGS=--help)
	$(PY) -m load.soak $(SOAK_ARGS)
