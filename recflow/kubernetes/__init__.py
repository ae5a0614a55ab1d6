"""The cluster backends: the same decisions as the local platform, carried out by Kubernetes objects.

- :mod:`recflow.kubernetes.trainjob`: the training step's torchrun run as a
  Kubeflow Trainer v2 ``TrainJob`` (create, watch, stream logs, explain a
  failure, delete).
- :mod:`recflow.kubernetes.inferenceservice`: the rollout controller's traffic
  backend for a KServe ``InferenceService`` (Serverless ``canaryTrafficPercent``
  or Standard ``spec.canary``), and the PromQL selectors of its two variants.
- :mod:`recflow.kubernetes.rollout`: a canary rollout on the cluster, decided by
  :func:`recflow.rollout.controller.run_rollout` exactly as on the local platform.
- :mod:`recflow.kubernetes.pipeline`: the ``kfp.kubernetes`` settings the compiled
  pipeline's tasks carry (workspace volume, secrets as environment, resources).
- :mod:`recflow.kubernetes.submit`: ``recflow pipeline submit``, a run through ``kfp.Client``.

The Kubernetes client is configured from inside the cluster (a pod's service
account) or else from the kubeconfig, like ``kubectl``.
"""

from __future__ import annotations

from pathlib import Path

# Where Kubernetes mounts a pod's service-account namespace.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def load_client_config() -> None:
    """Configure the ``kubernetes`` client: in-cluster credentials if this is a pod, else the kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def current_namespace() -> str:
    """This pod's namespace, else the kubeconfig context's, else ``default``."""
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    from kubernetes import config

    try:
        _, context = config.list_kube_config_contexts()
    except config.ConfigException:
        return "default"
    return context.get("context", {}).get("namespace") or "default"


def custom_objects_api():
    """A ``CustomObjectsApi`` (InferenceServices, TrainJobs), configured by :func:`load_client_config`."""
    from kubernetes import client

    load_client_config()
    return client.CustomObjectsApi()
