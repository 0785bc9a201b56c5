# Two commands for newcomers: `make run` (the main job) and `make test` (the tests).
# Both go through `make setup`, which is idempotent: it creates .venv if needed and
# installs the pinned dependencies (constraints.txt: torch==2.13.0, the CPU build where
# pip finds one; see the README) only when they changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: setup run test test-slow lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/pip || { rm -rf $(VENV); $(PY) -m venv $(VENV); }  # a half-made .venv too
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/mtopt sim demo --task lift-any --episodes 4 --out runs/demo
	if [ -f runs/local/checkpoints/learner.pt ]; then $(BIN)/mtopt run --config local --out runs/local --resume; \
	else $(BIN)/mtopt run --config local --out runs/local; fi

test: setup
	$(BIN)/python -m pytest -m "not slow" -q || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: a failure" >&2; fi; exit $$rc; }

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:  # the environment and caches; runs/ (hours of training) stays
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
