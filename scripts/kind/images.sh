#!/usr/bin/env bash
# Build the pipeline and serving images (docker/*.Dockerfile) under the names in
# recflow/images.yaml, then load them into the kind cluster if it exists.
#   TORCH_VARIANT=cu128 scripts/kind/images.sh   # a CUDA build of the same torch
set -euo pipefail
source "$(dirname "$0")/common.sh"
require docker
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"

log "building $PIPELINE_IMAGE (torch variant: $TORCH_VARIANT)"
docker build -f "$ROOT/docker/pipeline.Dockerfile" --build-arg "TORCH_VARIANT=$TORCH_VARIANT" \
    -t "$PIPELINE_IMAGE" "$ROOT"
log "building $SERVING_IMAGE"
docker build -f "$ROOT/docker/serving.Dockerfile" --build-arg "PIPELINE_IMAGE=$PIPELINE_IMAGE" \
    -t "$SERVING_IMAGE" "$ROOT"

if command -v kind >/dev/null && cluster_exists; then
    log "loading the images into kind cluster $KIND_CLUSTER"
    kind load docker-image --name "$KIND_CLUSTER" "$PIPELINE_IMAGE" "$SERVING_IMAGE"
else
    echo "no kind cluster '$KIND_CLUSTER' yet: run \`make kind-up\`, then \`make images\` again to load them"
fi
