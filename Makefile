# recflow: the two commands of the quickstart, and the pieces they are made of.
#   make run    set up, then the demo: train, serve, drift, retrain, canary, a faulty candidate (recflow demo)
#   make test   set up, then run the test suite
#   make pipeline   only the training pipeline, on DATA_SOURCE (kfp.local)
# Set-up is idempotent: a virtual environment in .venv with the project installed.
# On kind (needs docker, kind, kubectl, helm; see README "Run on kind"):
#   make kind-up     create the cluster and install the pinned platform (manifests/versions.env)
#   make images      build the pipeline and serving images and load them into the cluster
#   make kind-smoke  install the chart, wait for the InferenceService, query V1 and V2
#   make kind-down   delete the cluster

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKSPACE ?= .recflow
DATA_SOURCE ?= world:demo
PYTEST_ARGS ?=
# The CUDA build of torch for `make images` (a variant of the PyTorch index, e.g. cu128); cpu by default.
TORCH_VARIANT ?= cpu
# checkov (the chart's security scan in tests/kubernetes) lives in its own
# environment: its pins (packaging<24, networkx<2.7, ...) would downgrade what
# torch, kfp and feast run with. Exact pin: a new checkov brings new checks.
TOOLS := .venv-tools
CHECKOV_VERSION := 3.3.30

.PHONY: run pipeline system-packages test setup tools compile check-compiled bench-materialize clean images kind-up kind-down kind-smoke

run: setup system-packages
	$(BIN)/recflow demo --workspace $(WORKSPACE)

pipeline: setup
	$(BIN)/recflow pipeline run --workspace $(WORKSPACE) --data-source $(DATA_SOURCE)

# haproxy, prometheus, redis-server: installed when missing (as root), else named.
system-packages:
	scripts/system-packages.sh

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

# torch is installed first and pinned exactly: any range admitting a newer one
# would pull several GB of CUDA packages instead of the CPU wheel. The two
# environments are independent and install side by side (2 min 38 s against
# about 4 min 18 s one after the other, on a clean clone here).
setup:
	$(MAKE) --no-print-directory -j2 $(VENV)/.installed tools
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

tools: $(TOOLS)/.checkov-$(CHECKOV_VERSION)
$(TOOLS)/.checkov-$(CHECKOV_VERSION):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
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
