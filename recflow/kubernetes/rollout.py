"""A canary rollout on the cluster: the local platform's decisions, an InferenceService's traffic.

    recflow rollout --candidate pvc://recflow-workspace/models/<version> --cluster cluster.yaml

    from recflow.kubernetes.rollout import ClusterRolloutConfig, rollout_inferenceservice
    rollout_inferenceservice("s3://models/recflow/20250101-120000-ab12cd34",
                             ClusterRolloutConfig(prometheus_url="http://prometheus.monitoring:9090"),
                             RolloutConfig(), "rollout.jsonl")

The steps, the analysis, hold/advance/promote/rollback, the decision log and
applying the outcome are :func:`recflow.rollout.controller.carry_out`'s, as for ``recflow
rollout`` on the local platform. Here the traffic backend is the
InferenceService (:mod:`recflow.kubernetes.inferenceservice`, Serverless or
Standard mode) and the figures come from the cluster's Prometheus
with the selectors of the two revisions (or Deployments) the backend found.

The score check judges each model against its bundle's export-time score
histogram, as on the local platform, where this process reads the bundles:
both on the workspace volume (``pvc://recflow-workspace/...``) and that
volume mounted here (``workspace``: the chart's retraining pod). Elsewhere
(``recflow rollout --cluster`` from a laptop, ``s3://`` bundles) it falls
back to the canary's live scores against the stable's
(:mod:`recflow.rollout.analysis`), and its detail says which bundle's
histogram it lacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recflow.kubernetes import current_namespace, custom_objects_api
from recflow.kubernetes.inferenceservice import InferenceService, ServerlessCanary, StandardCanary, storage_uri
from recflow.kubernetes.pipeline import WORKSPACE_CLAIM, workspace_path
from recflow.monitoring.live import read_score_reference
from recflow.monitoring.scores import ScoreReference
from recflow.rollout.analysis import ScoreReferences
from recflow.rollout.controller import RolloutConfig, RolloutResult, carry_out, render_report, rollout_files
from recflow.rollout.prometheus import Prometheus, variant_metrics


class ClusterRolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prometheus_url: str = Field(description="the in-cluster Prometheus, e.g. http://<release>-prometheus.monitoring:9090")
    inference_service: str = "recommender"
    namespace: str | None = Field(None, description="default: this pod's namespace, else the kubeconfig's")
    mode: Literal["serverless", "standard"] = Field(
        "serverless", description="serverless: canaryTrafficPercent (Knative); standard: spec.canary (KServe >= 0.20)"
    )
    ready_timeout_seconds: float = Field(600.0, gt=0, description="for a revision or Deployment to become ready")
    poll_seconds: float = Field(5.0, gt=0)


def rollout_inferenceservice(
    candidate_uri: str,
    cluster: ClusterRolloutConfig,
    config: RolloutConfig,
    log_path: str | Path,
    api: Any = None,
    prometheus: Prometheus | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    workspace: str | Path | None = None,
) -> RolloutResult:
    """Roll ``candidate_uri`` (a bundle's storageUri) out behind the InferenceService; promoted or rolled back.

    ``api`` defaults to a ``kubernetes.client.CustomObjectsApi`` configured
    in-cluster or from the kubeconfig. ``workspace``: where the workspace
    volume is mounted in this process, if it is (the bundles' score
    histograms are read there). Whatever interrupts the rollout once the
    canary exists (a canary that never gets ready, an error, Ctrl-C) rolls it
    back before it propagates.
    """
    api = api if api is not None else custom_objects_api()
    isvc = InferenceService(cluster.inference_service, cluster.namespace or current_namespace(), api,
                            cluster.ready_timeout_seconds, cluster.poll_seconds, sleep, clock)  # fmt: skip
    backend = ServerlessCanary(isvc) if cluster.mode == "serverless" else StandardCanary(isvc)
    prometheus = prometheus or Prometheus(cluster.prometheus_url)
    stable_uri = storage_uri(isvc.get()["spec"]["predictor"])
    references = ScoreReferences(*(bundle_score_reference(uri, workspace) for uri in (stable_uri, candidate_uri)))
    try:
        backend.start_canary(candidate_uri)
        selectors = backend.selectors()
    except BaseException:  # a canary that never got ready: it must not keep the users it was given
        if backend.started:
            backend.roll_back()
        raise
    return carry_out(backend, lambda variant, seconds: variant_metrics(prometheus, selectors[variant], seconds),
                     config, log_path, sleep=sleep, references=references)  # fmt: skip


def bundle_score_reference(uri: str, workspace: str | Path | None) -> ScoreReference | None:
    """The export-time score histogram of the bundle at ``uri``; None unless it is on the workspace volume
    mounted here at ``workspace`` (and was exported with one)."""
    if workspace is None or not uri.startswith(f"pvc://{WORKSPACE_CLAIM}/"):
        return None
    return read_score_reference(workspace_path(uri, Path(workspace)))


def rollout_with_report(
    root: str | Path,
    candidate_uri: str,
    cluster: ClusterRolloutConfig,
    config: RolloutConfig,
    report: str | Path | None = None,
    workspace: str | Path | None = None,
) -> tuple[RolloutResult, Path]:
    """``recflow rollout --cluster``: :func:`rollout_inferenceservice`, its decision log and HTML report
    in ``<root>/rollouts/<time>/`` (the report where ``report`` says), as the local platform keeps them."""
    _, log_path, report = rollout_files(root, report)
    result = rollout_inferenceservice(candidate_uri, cluster, config, log_path, workspace=workspace)
    return result, render_report(log_path, report)
