# The two commands of the README. Both set up .venv from nothing first (scripts/setup.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2

.PHONY: setup run test test-all bench lock

setup:
	bash scripts/setup.sh

# Command 1: the embedded default (tiny models, synthetic tasks) end to end -> results/report.html.
# Targets come before the options: --configfile takes one or more files, so a target after it is read as a file.
# The end-to-end test (tests/test_tiny_dag.py) runs this recipe itself, in a copy of the checkout.
run: setup
	$(VENV)/bin/snakemake all --cores $(CORES) --configfile config/tiny.yaml
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/tiny.yaml --report results/report.html

# Command 2: the test suite (CI), the whole tiny DAG end to end included (~9 of its ~19 minutes on 2 cores).
# Tests marked `slow` (vLLM and SmolLM2 end to end, the report rules on synthetic metrics, accuracy gains of a
# longer RL run) take tens of minutes more: `make test-all` runs them too.
test:
	bash scripts/setup.sh --browser
	$(PY) -m pytest -q -m "not slow" --durations=15 $(PYTEST_ARGS)

test-all:
	bash scripts/setup.sh --browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

# Refresh the locks of tested versions (requirements/cpu.txt, requirements/gpu.txt) from pyproject.toml; then run
# `make test`, which installs and tests the new CPU lock.
lock: setup
	bash scripts/lock.sh
