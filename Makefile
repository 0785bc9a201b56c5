# Two commands for newcomers: `make run` (the main job) and `make test` (the tests).
# Both go through `make setup`, which is idempotent: it creates .venv if needed and
# installs the pinned dependencies (torch==2.13.0 CPU) only when they changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: setup run test test-slow lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/mtopt sim demo --task lift-any --episodes 4 --out runs/demo
	if [ -f runs/local/checkpoints/learner.pt ]; then $(BIN)/mtopt run --config local --out runs/local --resume; \
	else $(BIN)/mtopt run --config local --out runs/local; fi

test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs
