#!/usr/bin/env bash
# Bring up recflow's platform on kind, idempotently: the cluster (kind-config.yaml;
# skipped if it exists), then cert-manager, Knative Serving + Kourier, KServe
# (Knative mode), kube-prometheus-stack, Kubeflow Pipelines standalone and
# Kubeflow Trainer v2 with its runtimes, each at the version pinned in
# manifests/versions.env and each waited for until ready. Re-running applies the
# same versions again (a no-op when nothing changed). Ends by printing the URLs.
# Needs: docker, kind, kubectl, helm, git (kubectl -k fetches the Kubeflow manifests).
set -euo pipefail
source "$(dirname "$0")/common.sh"
require docker kind kubectl helm git

CONTEXT="kind-$KIND_CLUSTER"
k() { kubectl --context "$CONTEXT" "$@"; }
h() { helm --kube-context "$CONTEXT" "$@"; }
# Every Deployment of a namespace Available (the upstream manifests' own readiness).
wait_deployments() {
    k wait --for=condition=Available deployment --all -n "$1" --timeout="${2:-600s}"
}

if cluster_exists; then
    log "kind cluster $KIND_CLUSTER exists: keeping it"
else
    log "creating kind cluster $KIND_CLUSTER ($KIND_NODE_IMAGE)"
    kind create cluster --name "$KIND_CLUSTER" --config "$ROOT/kind-config.yaml" --wait 180s
fi
k wait --for=condition=Ready node --all --timeout=300s

log "cert-manager $CERT_MANAGER_VERSION"
k apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
wait_deployments cert-manager 300s

log "Knative Serving $KNATIVE_SERVING_VERSION with Kourier $KNATIVE_KOURIER_VERSION"
k apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_SERVING_VERSION/serving-crds.yaml"
k wait --for=condition=Established crd/services.serving.knative.dev --timeout=120s
k apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_SERVING_VERSION/serving-core.yaml"
k apply -f "https://github.com/knative-extensions/net-kourier/releases/download/$KNATIVE_KOURIER_VERSION/kourier.yaml"
k apply -f "$ROOT/manifests/knative/"
k apply -f "$ROOT/manifests/kourier-nodeport.yaml"
wait_deployments knative-serving
wait_deployments kourier-system

log "KServe $KSERVE_VERSION (Knative mode)"
h upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd --version "$KSERVE_VERSION" \
    --namespace kserve --create-namespace --wait
h upgrade --install kserve-resources oci://ghcr.io/kserve/charts/kserve-resources --version "$KSERVE_VERSION" \
    --namespace kserve -f "$ROOT/manifests/values/kserve.yaml" --wait --timeout 10m
k rollout status deployment/kserve-controller-manager -n kserve --timeout=300s

log "kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION"
h repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
h upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
    --version "$KUBE_PROMETHEUS_STACK_VERSION" --namespace monitoring --create-namespace \
    -f "$ROOT/manifests/values/kube-prometheus-stack.yaml" --wait --timeout 10m
wait_deployments monitoring

log "Kubeflow Pipelines $KFP_VERSION (standalone, platform-agnostic)"
k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
k wait --for=condition=Established crd/applications.app.k8s.io --timeout=120s
k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION"
k apply -f "$ROOT/manifests/kubeflow-pipelines-ui-nodeport.yaml"
wait_deployments kubeflow 900s

log "Kubeflow Trainer $TRAINER_VERSION and its runtimes"
k apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=$TRAINER_VERSION"
wait_deployments kubeflow-system
# The runtimes are checked by the Trainer's webhook, which is up only now.
k apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/runtimes?ref=$TRAINER_VERSION"
k get clustertrainingruntime torch-distributed >/dev/null

GRAFANA_PASSWORD="$(k get secret kube-prometheus-stack-grafana -n monitoring -o jsonpath='{.data.admin-password}' | base64 -d)"
cat <<MSG

recflow's platform is up on kind cluster $KIND_CLUSTER (kubectl context $CONTEXT).

  Kubeflow Pipelines UI  http://localhost:8081   (upload pipelines/training_pipeline.yaml there)
  Grafana                http://localhost:3000   (user admin, password $GRAFANA_PASSWORD)
  Inference endpoint     http://localhost:8080   (Kourier; send Host: <isvc>-predictor.$NAMESPACE.example.com)

Next:
  make images        # build the recflow images and load them into the cluster
  make kind-smoke    # install the chart, wait for the InferenceService, query V1 and V2
MSG
