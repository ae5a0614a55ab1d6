"""What the pipeline's tasks carry on a cluster: ``kfp.kubernetes`` settings and resources.

The compiled YAML holds them; ``kfp.local`` ignores them, so the same
pipeline runs on a laptop unchanged. Every task

- mounts the workspace volume (PersistentVolumeClaim ``recflow-workspace``) at
  ``/recflow/workspace``, the value to give the ``workspace`` parameter: the
  Feast repository, the registry of blessed models and the TrainJob staging
  directories live there, shared by the run's pods and the trainer pods;
- gets the object-storage credentials (Secret ``recflow-storage``) and the
  feature store's connections (Secret ``recflow-feature-store``) as
  environment variables, each optional: without them the pipeline runs on
  the workspace volume alone;
- requests CPU and memory by its weight (:data:`SIZES`).

The train task also gets ``$RECFLOW_TRAINJOB`` from the ConfigMap
``recflow-training`` (key ``trainjob``, a
:class:`recflow.kubernetes.trainjob.TrainJobConfig`), also optional: with it
the retrieval model trains in a Kubeflow TrainJob, without it with torchrun in
the task's own pod.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from kfp import kubernetes
from kfp.dsl import PipelineTask

from recflow.kubernetes.trainjob import TRAINJOB_ENV

WORKSPACE_CLAIM = "recflow-workspace"
WORKSPACE_MOUNT = "/recflow/workspace"
# Secret name -> {key: environment variable}; the variables are those boto3/s3fs and
# feature_repo/feature_store.cluster.yaml read.
SECRETS = {
    "recflow-storage": {name: name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")},
    "recflow-feature-store": {name: name for name in ("REDIS_CONNECTION_STRING", "FEAST_REGISTRY_URL")},
}
TRAINING_CONFIG_MAP = "recflow-training"
# Requests and limits (cpu request, cpu limit, memory request, memory limit) by weight:
# "training": the two training tasks, which train in their own pod (the retrieval model too
# when no TrainJob is configured: torchrun, 2 processes by default).
SIZES = {
    "standard": ("500m", "2", "2Gi", "4Gi"),
    "training": ("2", "4", "4Gi", "8Gi"),
}


def workspace_uri(path: Path, workspace: Path) -> str:
    """The storage URI of a directory on the workspace volume, mounted at ``workspace`` here (what an
    InferenceService's ``storageUri`` names): ``pvc://recflow-workspace/<path relative to workspace>``."""
    return f"pvc://{WORKSPACE_CLAIM}/{Path(path).resolve().relative_to(Path(workspace).resolve()).as_posix()}"


def workspace_path(uri: str, workspace: Path) -> Path:
    """The directory a ``pvc://recflow-workspace/...`` URI names, the volume mounted at ``workspace`` here."""
    prefix = f"pvc://{WORKSPACE_CLAIM}/"
    if not uri.startswith(prefix):
        raise ValueError(f"{uri} is not on the workspace volume ({prefix}...)")
    return Path(workspace) / uri.removeprefix(prefix)


def for_cluster(task: PipelineTask, size: Literal["standard", "training"] = "standard") -> PipelineTask:
    """``task`` with the workspace volume, the secrets as environment and its resources."""
    kubernetes.mount_pvc(task, pvc_name=WORKSPACE_CLAIM, mount_path=WORKSPACE_MOUNT)
    for secret, keys in SECRETS.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    cpu_request, cpu_limit, memory_request, memory_limit = SIZES[size]
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    return task


def with_trainjob(task: PipelineTask) -> PipelineTask:
    """``task`` with ``$RECFLOW_TRAINJOB`` from the training ConfigMap (the train task)."""
    kubernetes.use_config_map_as_env(
        task, config_map_name=TRAINING_CONFIG_MAP, config_map_key_to_env={"trainjob": TRAINJOB_ENV}, optional=True
    )
    return task
