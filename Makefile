# Everything installs into ./.venv; nothing touches the system Python.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HTTPBIN_VENV ?= .venv-httpbin
BENCH_VENV ?= .venv-bench
# extra options for the benchmark suite, e.g. BENCH_ARGS='--only http,skew --repeat 3'
BENCH_ARGS ?=
CONFIG ?= deploy/worker.ini

.PHONY: help init demo run test lint typecheck docs bench bench-smoke clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

init: $(BIN)/async-consumer  ## create .venv with the package, its broker clients and dev tools

$(BIN)/async-consumer: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,rabbitmq,redis]'
	touch $@

$(HTTPBIN_VENV)/bin/python:
	$(PYTHON) -m venv $(HTTPBIN_VENV)
	$(HTTPBIN_VENV)/bin/pip install --quiet httpbin

demo: init  ## run the main job: 2,000 HTTP jobs against a local target
	$(BIN)/python examples/demo.py

run: init  ## run a worker: make run CONFIG=worker.ini
	$(BIN)/async-consumer run -c $(CONFIG)

test: init $(HTTPBIN_VENV)/bin/python  ## run the test suite
	ASYNC_CONSUMER_HTTPBIN_PYTHON=$(HTTPBIN_VENV)/bin/python $(BIN)/pytest -q

lint: init  ## check style (limits live in setup.cfg)
	$(BIN)/flake8 async_consumer tests examples

typecheck: init  ## check type hints
	$(BIN)/mypy async_consumer

bench: $(BENCH_VENV)/.installed  ## measure against peers, side by side (about 25 minutes)
	$(BENCH_VENV)/bin/python -m bench $(BENCH_ARGS)

bench-smoke: $(BENCH_VENV)/.installed  ## every benchmark scenario once, tiny sizes (CI)
	$(BENCH_VENV)/bin/python -m bench --smoke $(BENCH_ARGS)

# The peers live in their own environment, never in .venv or the package's dependencies.
$(BENCH_VENV)/.installed: setup.cfg setup.py bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e '.[rabbitmq,redis]' -r bench/requirements.txt
	touch $@

docs: init  ## regenerate the INI reference, then build the docs site into site/ (warnings fail)
	$(BIN)/python -m async_consumer.reference --write
	$(BIN)/mkdocs build --strict --quiet --site-dir site

clean:  ## remove the virtual environments and run state
	rm -rf $(VENV) $(HTTPBIN_VENV) $(BENCH_VENV) site var .pytest_cache .mypy_cache
