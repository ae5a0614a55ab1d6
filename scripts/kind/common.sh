# Shared by scripts/kind/*.sh (sourced, not run): the pinned versions, the image
# names, the cluster's name and small helpers.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../../manifests/versions.env
source "$ROOT/manifests/versions.env"

KIND_CLUSTER="${KIND_CLUSTER:-recflow}"
# recflow's namespace: Kubeflow Pipelines standalone runs pipeline pods here, and
# the chart's RBAC lets them manage TrainJobs and the InferenceService here only.
NAMESPACE="${NAMESPACE:-kubeflow}"
RELEASE="${RELEASE:-recflow}"

# The images' names live in recflow/images.yaml (`name: reference` lines).
image_ref() {
    sed -n "s/^$1: *//p" "$ROOT/recflow/images.yaml"
}
PIPELINE_IMAGE="${PIPELINE_IMAGE:-$(image_ref pipeline)}"
SERVING_IMAGE="${SERVING_IMAGE:-$(image_ref serving)}"

log() {
    printf '\n==> %s\n' "$*"
}

require() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "error: $tool is not installed (needed: $*)" >&2; exit 1; }
    done
}

cluster_exists() {
    kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"
}
