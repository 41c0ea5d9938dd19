# Load, lag and benchmark targets (issue 4). Included by the main Makefile (-include mk/*.mk).
.PHONY: lag load bench bench-quick
LAG_ARGS ?=
LOAD_ARGS ?=
BENCH_ARGS ?=

lag: venv ## Per-partition committed/end offsets and lag of the consumer group, and KEDA's verdict (LAG_ARGS=--json)
	$(PY) -m tools.kafka_lag $(LAG_ARGS)

load: venv ## Bounded purchase load via :8080 (Host: purchase.local) with a lag/replica timeline and a PNG chart of it (LOAD_ARGS=--help)
	$(PY) -m load.scale $(LOAD_ARGS)

bench: venv ## Benchmark on its own local servers vs raw baselines (minutes; not in make test) -> bench-results.json
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: venv ## The benchmark with small sizes: a smoke run in about two minutes
	$(PY) -m bench.run --quick $(BENCH_ARGS)
