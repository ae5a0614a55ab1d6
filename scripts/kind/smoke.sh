#!/usr/bin/env bash
# End-to-end check on the kind cluster (after `make kind-up` and `make images`):
# a model bundle is put on the cluster's model volume, the chart is installed with
# helm, the InferenceService must become Ready, and the V1 and V2 endpoints must
# answer through the ingress with top-k items. Exits non-zero on any failure.
#   BUNDLE=path/to/bundle make kind-smoke   # serve this bundle instead of training a tiny one
set -euo pipefail
source "$(dirname "$0")/common.sh"
require kind kubectl helm curl python3

CONTEXT="kind-$KIND_CLUSTER"
k() { kubectl --context "$CONTEXT" "$@"; }
cluster_exists || { echo "error: no kind cluster '$KIND_CLUSTER': run \`make kind-up\` first" >&2; exit 1; }
ISVC=recommender

if [[ -z "${BUNDLE:-}" ]]; then
    WORKSPACE="$ROOT/.recflow/kind-smoke"
    log "training a tiny model for the smoke test (workspace $WORKSPACE)"
    "$ROOT/.venv/bin/recflow" pipeline run --workspace "$WORKSPACE" --data-source world:tiny \
        --param epochs=1 --param nproc_per_node=1 --param test_days=2 --param 'gate={}'
    BUNDLE="$("$ROOT/.venv/bin/python" -c 'import sys; from pathlib import Path; from recflow.pipeline.registry import ModelRegistry; print(ModelRegistry(Path(sys.argv[1]) / "models").current()["path"])' "$WORKSPACE")"
fi
[[ -f "$BUNDLE/model_card.json" ]] || { echo "error: $BUNDLE is not a model bundle (no model_card.json)" >&2; exit 1; }

# The chart makes the workspace volume; the bundle is copied onto it right after, and
# the model server (which cannot start without it) is restarted to pick it up.
STORAGE_URI=pvc://recflow-workspace/models/smoke
log "helm install $RELEASE (namespace $NAMESPACE), serving $STORAGE_URI"
helm --kube-context "$CONTEXT" upgrade --install "$RELEASE" "$ROOT/helm/recflow" --namespace "$NAMESPACE" \
    -f "$ROOT/helm/recflow/ci/default-values.yaml" \
    --set "inferenceService.storageUri=$STORAGE_URI" --wait --timeout 15m

log "copying $BUNDLE to $STORAGE_URI"
k apply -f "$ROOT/manifests/workspace-loader.yaml"
k wait --for=condition=Ready pod/recflow-workspace-loader -n "$NAMESPACE" --timeout=300s
k exec -n "$NAMESPACE" recflow-workspace-loader -- sh -c 'rm -rf /recflow/workspace/models/smoke && mkdir -p /recflow/workspace/models'
k cp "$BUNDLE" "$NAMESPACE/recflow-workspace-loader:/recflow/workspace/models/smoke"
k delete pod recflow-workspace-loader -n "$NAMESPACE" --wait=false
k delete pod -n "$NAMESPACE" -l "serving.kserve.io/inferenceservice=$ISVC" --wait=false

log "waiting for InferenceService $ISVC"
k wait --for=condition=Ready "inferenceservice/$ISVC" -n "$NAMESPACE" --timeout=900s
# The release's Deployments (feature server, Redis, feedback service, drift monitor, retraining) Available as well.
k wait --for=condition=Available deployment -l "app.kubernetes.io/instance=$RELEASE" -n "$NAMESPACE" --timeout=300s
HOST="$(k get inferenceservice "$ISVC" -n "$NAMESPACE" -o jsonpath='{.status.components.predictor.url}' | cut -d/ -f3)"
echo "predictor host: $HOST"

log "V1: POST /v1/models/recommender:predict"
curl -fsS -H "Host: $HOST" -H 'Content-Type: application/json' \
    http://localhost:8080/v1/models/recommender:predict \
    -d '{"instances": [{"user_id": "u1", "k": 5}, {"user_id": "someone-new", "k": 5}]}' \
    | python3 -c '
import json, sys
answer = json.load(sys.stdin)
predictions = answer["predictions"]
assert len(predictions) == 2, answer
for p in predictions:
    assert len(p["items"]) == 5, p
    print(p["user_id"], [i["item_id"] for i in p["items"]], "fallback:", p["fallback"])
'

log "V2: POST /v2/models/recommender/infer"
curl -fsS -H "Host: $HOST" -H 'Content-Type: application/json' \
    http://localhost:8080/v2/models/recommender/infer \
    -d '{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u1"]},
                    {"name": "k", "datatype": "INT32", "shape": [1], "data": [5]}]}' \
    | python3 -c '
import json, sys
answer = json.load(sys.stdin)
outputs = {o["name"]: o for o in answer["outputs"]}
assert outputs["item_ids"]["shape"] == [1, 5], outputs
print("item_ids", outputs["item_ids"]["data"])
'

log "kind smoke test passed: InferenceService $ISVC answers V1 and V2 at http://localhost:8080 (Host: $HOST)"
