# Two commands on a fresh machine:  `make demo` (main job)  and  `make test` (test suite).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-slow lint bench clean

setup:
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(VENV)/bin/wgraph demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check wgraph tests benchmarks

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/bench_convert.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
