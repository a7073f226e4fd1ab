# Two commands on a fresh machine: `make search` (the main job) and `make test`.
# Each creates .venv when it is missing and reinstalls when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup search train ablate dashboard test lint format bench bench-quick mutate clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,mlflow]'
	touch $(STAMP)

search: $(STAMP)  ## the main job: the epsilon sweep on MNIST-1D and its verdict (about 8 min, 2 cores)
	$(BIN)/dgkd-search --study eps_sweep --trials 200

train: $(STAMP)  ## one default DGKD run
	$(BIN)/dgkd-train

ablate: $(STAMP)  ## DGKD against epsilon=0 and the sign flip, 3 teachers x 10 paired seeds
	$(BIN)/dgkd-ablate --variants no_grad_term,minimize_mse

STUDY ?= eps_sweep
PORT  ?= 8080
dashboard: $(STAMP)  ## optuna-dashboard for runs/$(STUDY) on http://127.0.0.1:$(PORT) (make dashboard STUDY=smoke)
	$(BIN)/dgkd-search --study $(STUDY) --dashboard $(PORT)

test: lint  ## lint, types and the whole test suite, in two processes (pytest-xdist)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)  ## full benchmark run (about 65 min); writes BENCHMARKS.md
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

mutate: $(STAMP)  ## mutation testing of the numeric core, ends with the score (docs/mutation.md)
	test -x $(BIN)/mutmut || $(BIN)/python -m pip install --quiet -e '.[mutate]'
	$(BIN)/python scripts/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
