VENV ?= .venv
PY := $(VENV)/bin/python
# Written when the virtual environment holds everything pyproject.toml asks for (the `dev` extra: the
# service, the engine and the tools); `make test` and `make demo` build it first on a fresh machine,
# and again when pyproject.toml changes.
INSTALLED := $(VENV)/.installed
ARGS ?=

.PHONY: install test bench lint format demo compare-demo services

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	touch $(INSTALLED)

services:
	scripts/test-services.sh

test: $(INSTALLED) services
	$(PY) -m pytest -q $(ARGS)

# The main job: API + worker + dashboard on the embedded default, running the demo comparison.
demo: $(INSTALLED)
	$(VENV)/bin/velora-bench up --submit demo $(ARGS)

# The same comparison in-process, without the service.
compare-demo: $(INSTALLED)
	$(VENV)/bin/velora-bench compare --preset demo --out out/demo $(ARGS)

bench: $(INSTALLED)
	$(PY) benchmarks/layer_speed.py --out benchmarks/results

# ruff on everything; mypy on backend/, worker/ and velora_core/contract/ ([tool.mypy] in pyproject.toml).
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(INSTALLED)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
