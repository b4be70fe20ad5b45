# The two entry points a newcomer needs: `make demo` and `make test`.
# Both create the project's virtual environment (.venv) when it is missing.
# torch and torchvision come from the package registry, pinned as a matching pair:
# a CPU-only local torch wheel breaks torchvision (and so timm); see DEVELOPERS.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.fishertune-installed

.PHONY: venv demo test lint typecheck bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[test]" $(TORCH_PINS)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/fishertune demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/per_sample_fisher.py
	$(BIN)/python benchmarks/variational_step.py
	$(BIN)/python benchmarks/estimator_quality.py
	$(BIN)/python benchmarks/sparse_adamw.py
	$(BIN)/python benchmarks/top_k.py
	$(BIN)/python benchmarks/segmentor_tiny.py
	$(BIN)/python benchmarks/tuner_costs.py
	$(BIN)/python benchmarks/loader_throughput.py
	$(BIN)/python benchmarks/training_stages.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
