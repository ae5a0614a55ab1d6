# syntax=docker/dockerfile:1
# The serving image: the KServe model server of the `recommender` model
# (`recflow serve`). Built from the repository root by `make images`, after the
# pipeline image it starts from.
#
# It is the pipeline image plus the server's entrypoint, on purpose: the bundle is
# served by exactly the torch, Feast and recflow that trained and evaluated it,
# so the served top-k is the evaluated top-k. The multi-stage build, the pinned
# Python base, the non-root user and the absence of build tools come from
# docker/pipeline.Dockerfile; this file adds no packages.
ARG PIPELINE_IMAGE=recflow/pipeline:0.1.0

FROM ${PIPELINE_IMAGE}
ARG UID=10001
USER ${UID}:${UID}
# KServe's storage initializer puts the InferenceService's storageUri in /mnt/models.
EXPOSE 8080
ENTRYPOINT ["recflow", "serve"]
CMD ["--bundle", "/mnt/models", "--port", "8080"]
