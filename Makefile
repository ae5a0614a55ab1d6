# recflow: the two commands of the quickstart, and the pieces they are made of.
#   make run    set up, then run the training pipeline locally on the demo world (kfp.local)
#   make test   set up, then run the test suite
# Set-up is idempotent: a virtual environment in .venv with the project installed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKSPACE ?= .recflow
DATA_SOURCE ?= world:demo
PYTEST_ARGS ?=

.PHONY: run test setup compile check-compiled bench-materialize clean

run: setup
	$(BIN)/recflow pipeline run --workspace $(WORKSPACE) --data-source $(DATA_SOURCE)

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

# torch is installed first and pinned exactly: any range admitting a newer one
# would pull several GB of CUDA packages instead of the CPU wheel.
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

compile: setup
	$(BIN)/recflow pipeline compile

check-compiled: setup
	$(BIN)/recflow pipeline compile --check

bench-materialize: setup
	$(BIN)/recflow bench materialize --scale demo

clean:
	rm -rf $(WORKSPACE)

# The shell logic lives in scripts/kind/ (bash -n is checked by the tests).
images:
	TORCH_VARIANT=$(TORCH_VARIANT) scripts/kind/images.sh

kind-up:
	scripts/kind/up.sh

kind-down:
	scripts/kind/down.sh

kind-smoke: setup
	scripts/kind/smoke.sh
