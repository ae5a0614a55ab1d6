# syntax=docker/dockerfile:1
# The pipeline and training image: every step of the compiled pipeline and the
# Kubeflow Trainer TrainJob (torchrun) run in it. Built from the repository root:
#   make images                          # CPU torch (the default)
#   make images TORCH_VARIANT=cu128      # a CUDA build of the same torch (a variant the
#                                        # PyTorch index publishes for this torch version)
# Its name and tag live in recflow/images.yaml (`make images` reads them).

# Exact tag: every build starts from the same Python; add @sha256:<digest> to pin
# the bytes too (`docker buildx imagetools inspect python:3.11.14-slim-bookworm`).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Exact torch pin, from the PyTorch index of one variant: a plain PyPI install on
# Linux pulls the CUDA wheels (several GB) even where only the CPU is used.
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# A compiler only here, for any dependency without a wheel for this platform (arm64 hosts).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"
# The project (not editable): torch is already satisfied, the rest comes from PyPI.
COPY pyproject.toml README.md /src/
COPY recflow /src/recflow
COPY serving /src/serving
COPY components /src/components
COPY pipelines /src/pipelines
COPY benchmarks /src/benchmarks
RUN pip install /src && pip check

FROM ${PYTHON_IMAGE}
# A fixed numeric uid, so Kubernetes can verify runAsNonRoot without a passwd lookup.
ARG UID=10001
RUN groupadd --gid ${UID} recflow \
    && useradd --uid ${UID} --gid ${UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin recflow
COPY --from=builder /opt/venv /opt/venv
# The Feast definitions: recflow.features.store.source_repo() reads RECFLOW_FEATURE_REPO.
COPY feature_repo /opt/recflow/feature_repo
# HOME=/tmp: with a read-only root filesystem, /tmp is the writable emptyDir the pods mount.
ENV PATH=/opt/venv/bin:${PATH} \
    RECFLOW_FEATURE_REPO=/opt/recflow/feature_repo \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER ${UID}:${UID}
# KFP and the TrainJob give the command; by default, the CLI's help.
CMD ["recflow", "--help"]
