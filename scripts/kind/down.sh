#!/usr/bin/env bash
# Delete the kind cluster (everything in it goes with it). Fine when it does not exist.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require kind
if cluster_exists; then
    kind delete cluster --name "$KIND_CLUSTER"
else
    echo "no kind cluster '$KIND_CLUSTER': nothing to delete"
fi
