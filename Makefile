VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test bench lint format demo

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'

test:
	$(PY) -m pytest -q

bench:
	$(PY) benchmarks/layer_speed.py --out benchmarks/results

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo:
	$(VENV)/bin/velora-bench compare --preset demo --out out/demo
