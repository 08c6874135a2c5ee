# The README's two commands. Each bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/hst_synthetic.py
WORKDIR ?= runs/quickstart

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

.PHONY: setup run test test-slow bench
setup: $(STAMP)

run: $(STAMP)
	$(PY) launch/main.py --config=$(CONFIG) --workdir=$(WORKDIR)

# 8 fake CPU devices so the sharding tests see a mesh.
test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests

# The long ones (soak, multi-kill preemption): `-m slow` overrides addopts.
test-slow: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -m slow tests

# Every figure of bench/README.md (minutes to an hour on a 2-core CPU).
bench: $(STAMP)
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_pipeline.py --dir data
	$(PY) bench/bench_propagation.py --data_dir=data
	$(PY) bench/bench_train_step.py --dir data
	$(PY) bench/scaling_estimate.py
