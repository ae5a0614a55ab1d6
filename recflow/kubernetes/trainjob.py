"""The training step on a cluster: torchrun in a Kubeflow Trainer v2 ``TrainJob``.

:class:`TrainJobLauncher` has the contract of
:func:`recflow.training.launch.run_torchrun` (same arguments, same result: the
run's train metrics, the model exported to ``output``), so
:func:`recflow.pipeline.steps.train` decides what to train and with which
config once, whichever backend runs it. The launcher

1. stages the training set, the feature spec and the config in a directory of
   the shared workspace volume (the pipeline's pods and the trainer pods mount
   the same PersistentVolumeClaim at the same path; a pipeline artifact lives
   on the component pod's disk, which the trainer pods cannot see);
2. creates a ``TrainJob`` that runs the same entrypoint
   (:func:`recflow.training.launch.entrypoint_args`) under
   ``python -m torch.distributed.run`` in the pipeline image, on ``num_nodes``
   nodes of ``nproc_per_node`` processes. The Torch runtime sets the ``PET_*``
   variables torchrun reads (nodes, processes, node rank, master address), so
   the command carries none of them;
3. polls its conditions until ``Complete`` or ``Failed``, streaming every
   trainer pod's log through the ``recflow.training.trainjob`` logger;
4. on ``Complete`` copies the model into ``output`` and deletes the TrainJob;
   on ``Failed`` raises :class:`TrainJobFailed` with the condition's message,
   each pod's termination reason (``OOMKilled``, exit codes, image pull errors)
   and the last log lines, and keeps the TrainJob for ``kubectl describe``;
   on a timeout, Ctrl-C or SIGTERM (a cancelled KFP run) deletes it.

Configured by ``$RECFLOW_TRAINJOB`` (a :class:`TrainJobConfig` as JSON or
YAML; on the cluster, the ``recflow-training`` ConfigMap's ``trainjob`` key
is mounted as that variable by the pipeline's ``kfp.kubernetes`` settings).
Without it, training runs with torchrun in the calling process's machine.

Requires Kubeflow Trainer >= v2.3 (``spec.runtimePatches`` mounts the volume)
and RBAC for the caller's service account: ``trainjobs`` create/get/delete,
``pods`` list, ``pods/log`` get.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recflow.kubernetes import current_namespace, load_client_config
from recflow.training.config import TrainConfig
from recflow.training.features import FeatureSpec
from recflow.training.launch import TORCHRUN_ENV, entrypoint_args
from recflow.training.train import METRICS_FILE

if TYPE_CHECKING:
    from kubernetes.client import V1Pod

logger = logging.getLogger("recflow.training.trainjob")

TRAINJOB_ENV = "RECFLOW_TRAINJOB"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
# The Torch runtime's replicated job and trainer container are both named "node"
# (Kubeflow Trainer's convention); JobSet, which runs the TrainJob under the
# same name, labels every pod with both names.
NODE = "node"
TRAINER_PODS = "jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=" + NODE
# torchrun's settings, which the Torch runtime owns; the Trainer webhook rejects them in spec.trainer.env.
TORCHRUN_RESERVED_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
PATCH_MANAGER = "recflow.training"
WORKSPACE_VOLUME = "recflow-workspace"
# Per-job directories on the workspace volume.
STAGING_DIR = "trainjobs"
TAIL_LINES = 40
# Seconds to let the log streams drain once a TrainJob has ended.
LOG_DRAIN_SECONDS = 5.0
# Waiting reasons that are a normal part of starting a container.
STARTING = {"ContainerCreating", "PodInitializing"}


class Resources(BaseModel):
    """Kubernetes resource quantities as strings (``"500m"``, ``"4Gi"``, ``"nvidia.com/gpu": "1"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: dict[str, str] = {}
    limits: dict[str, str] = {}


class SharedVolume(BaseModel):
    """The workspace PersistentVolumeClaim, mounted at ``mount_path`` here and in the trainer pods."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    claim_name: str = Field(min_length=1)
    mount_path: str = Field(pattern=r"^/", description="absolute path, the same in both pods")


class TrainJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(min_length=1, description="the pipeline image, which has recflow and torch")
    workspace: SharedVolume
    runtime: str = Field("recflow-torch", description="the Torch (Cluster)TrainingRuntime to run on")
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"
    namespace: str | None = Field(None, description="default: this pod's namespace, else the kubeconfig's")
    num_nodes: int = Field(1, ge=1)
    resources_per_node: Resources = Resources(requests={"cpu": "2", "memory": "4Gi"}, limits={"memory": "8Gi"})
    env: dict[str, str] = {}
    timeout_seconds: float = Field(6 * 3600.0, gt=0, description="also the TrainJob's activeDeadlineSeconds")
    poll_seconds: float = Field(5.0, gt=0)

    @field_validator("env")
    @classmethod
    def _no_torchrun_settings(cls, env: dict[str, str]) -> dict[str, str]:
        reserved = sorted(TORCHRUN_RESERVED_ENV & env.keys())
        if reserved:
            raise ValueError(f"{reserved} are set by the Torch runtime and must not be given")
        return env


class TrainJobError(RuntimeError):
    """The TrainJob did not produce a model."""


class TrainJobFailed(TrainJobError):
    """The TrainJob reported ``Failed``; the message says why and where to look."""


class TrainJobTimedOut(TrainJobError):
    """The TrainJob did not finish in time; it was deleted."""


def from_environment() -> TrainJobLauncher | None:
    """The launcher ``$RECFLOW_TRAINJOB`` configures, or None (train with torchrun here)."""
    settings = os.environ.get(TRAINJOB_ENV, "").strip()
    if not settings:
        return None
    return TrainJobLauncher(TrainJobConfig.model_validate(yaml.safe_load(settings)))


def build_trainjob(name: str, namespace: str, config: TrainJobConfig, command: list[str], nproc_per_node: int) -> dict:
    """The TrainJob object: the runtime, the trainer (image, command, nodes, resources, env), the volume."""
    mount = {"name": WORKSPACE_VOLUME, "mountPath": config.workspace.mount_path}
    pod_patch = {
        "volumes": [{"name": WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": config.workspace.claim_name}}],
        "containers": [{"name": NODE, "volumeMounts": [mount]}],
    }
    resources = {key: value for key, value in config.resources_per_node.model_dump().items() if value}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "recflow", "app.kubernetes.io/component": "training",
                       "app.kubernetes.io/managed-by": "recflow"},  # fmt: skip
        },
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": config.runtime_kind, "name": config.runtime},
            # Enforced by the cluster too, so a launcher that dies without cleaning up leaves no job running.
            "activeDeadlineSeconds": math.ceil(config.timeout_seconds),
            "trainer": {
                "image": config.image,
                "command": command,
                "numNodes": config.num_nodes,
                "numProcPerNode": nproc_per_node,
                "resourcesPerNode": resources,
                "env": [{"name": key, "value": value} for key, value in sorted({**TORCHRUN_ENV, **config.env}.items())],
            },
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                    {"name": NODE, "template": {"spec": {"template": {"spec": pod_patch}}}},
                ]}}},
            }],  # fmt: skip
        },
    }


class TrainJobLauncher:
    """Train in a TrainJob; called like :func:`recflow.training.launch.run_torchrun`.

    ``custom_api``/``core_api`` (``kubernetes.client.CustomObjectsApi`` and
    ``CoreV1Api``) default to clients configured in-cluster or from the
    kubeconfig; ``sleep`` and ``clock`` pace the polling.
    """

    def __init__(
        self,
        config: TrainJobConfig,
        custom_api: Any = None,
        core_api: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if custom_api is None or core_api is None:
            from kubernetes import client

            load_client_config()
            custom_api = custom_api or client.CustomObjectsApi()
            core_api = core_api or client.CoreV1Api()
        self.config = config
        self.custom = custom_api
        self.core = core_api
        self.sleep = sleep
        self.clock = clock
        self.namespace = config.namespace or current_namespace()

    def __call__(
        self,
        training_set: str | Path,
        feature_spec: FeatureSpec,
        output: str | Path,
        config: TrainConfig,
        nproc_per_node: int = 1,
        checkpoint_dir: str | Path | None = None,
        max_restarts: int = 0,
    ) -> dict:
        """Run the training; return its train metrics. ``output`` receives the model.

        Checkpoints go to the job's directory on the shared volume whenever
        ``checkpoint_dir`` is given (the trainer pods cannot write where the
        caller asked), so torchrun's restarts resume from them.
        """
        # Fail here, with the config error, rather than in every pod.
        config.local_batch_size(self.config.num_nodes * nproc_per_node)
        name = f"recflow-train-{uuid.uuid4().hex[:8]}"
        job_dir = Path(self.config.workspace.mount_path) / STAGING_DIR / name
        job_dir.mkdir(parents=True)
        try:
            shutil.copyfile(training_set, job_dir / "training_set.parquet")
            (job_dir / "feature_spec.json").write_text(feature_spec.model_dump_json())
            (job_dir / "train_config.json").write_text(config.model_dump_json())
            command = [
                "python", "-m", "torch.distributed.run", "--max-restarts", str(max_restarts),
                *entrypoint_args(job_dir / "training_set.parquet", job_dir / "feature_spec.json", job_dir / "model",
                                 job_dir / "train_config.json", job_dir / "checkpoints" if checkpoint_dir else None),
            ]  # fmt: skip
            self.run(build_trainjob(name, self.namespace, self.config, command, nproc_per_node))
            shutil.copytree(job_dir / "model", output, dirs_exist_ok=True)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)
        return json.loads((Path(output) / METRICS_FILE).read_text())

    def run(self, trainjob: dict) -> None:
        """Create ``trainjob``, follow it to the end, and delete it unless it failed."""
        name = trainjob["metadata"]["name"]
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, trainjob)
        logger.info("created TrainJob %s/%s (runtime %s)", self.namespace, name, trainjob["spec"]["runtimeRef"]["name"])
        logs = PodLogs(self.core, self.namespace, name)
        keep = False
        try:
            with _sigterm_raises():
                self._watch(name, logs)
        except TrainJobFailed:
            keep = True
            raise
        finally:
            logs.stop(LOG_DRAIN_SECONDS)
            if not keep:
                self._delete(name)

    def _watch(self, name: str, logs: PodLogs) -> None:
        deadline = self.clock() + self.config.timeout_seconds
        reported: set[str] = set()
        while True:
            job = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            pods = self._pods(name)
            logs.follow(pods)
            for problem in (problem for pod in pods for problem in pod_problems(pod)):
                if problem not in reported:
                    reported.add(problem)
                    logger.warning("TrainJob %s: %s", name, problem)
            conditions = {c["type"]: c for c in job.get("status", {}).get("conditions", [])}
            if _is_true(conditions.get("Complete")):
                logger.info("TrainJob %s/%s complete", self.namespace, name)
                return
            if _is_true(conditions.get("Failed")):
                logs.stop(LOG_DRAIN_SECONDS)
                raise TrainJobFailed(self._failure(name, conditions["Failed"], pods, logs))
            if self.clock() >= deadline:
                state = ", ".join(f"{c['type']}={c['status']}" for c in conditions.values()) or "no conditions yet"
                problems = "".join(f"\n  {problem}" for problem in sorted(reported))
                raise TrainJobTimedOut(
                    f"TrainJob {self.namespace}/{name} did not finish within {self.config.timeout_seconds:g} s "
                    f"({state}); deleted it{problems}"
                )
            self.sleep(self.config.poll_seconds)

    def _pods(self, name: str) -> list[V1Pod]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=TRAINER_PODS.format(name=name)).items

    def _failure(self, name: str, condition: dict, pods: list[V1Pod], logs: PodLogs) -> str:
        lines = [f"TrainJob {self.namespace}/{name} failed: {condition.get('reason', '')}: {condition.get('message', '')}"]
        lines += [f"  {problem}" for pod in pods for problem in pod_problems(pod)]
        for pod, tail in logs.tails.items():
            if tail:
                lines.append(f"last log lines of {pod}:")
                lines += [f"  {line}" for line in tail]
        lines.append(f"kept for inspection: kubectl -n {self.namespace} describe trainjob {name} "
                     f"(then kubectl -n {self.namespace} delete trainjob {name})")  # fmt: skip
        return "\n".join(lines)

    def _delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Background"
            )
            logger.info("deleted TrainJob %s/%s", self.namespace, name)
        except ApiException as error:
            if error.status != 404:  # already gone is what we wanted
                logger.error("could not delete TrainJob %s/%s (%s): kubectl -n %s delete trainjob %s",
                             self.namespace, name, error.reason, self.namespace, name)  # fmt: skip


def pod_problems(pod: V1Pod) -> list[str]:
    """What stops or stopped a trainer pod, in words: termination reasons, exit codes, waiting reasons, scheduling."""
    name, problems = pod.metadata.name, []
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            problems.append(f"pod {name} not scheduled: {condition.reason}: {condition.message}")
    for status in pod.status.container_statuses or []:
        for when, state in (("terminated", status.state), ("restarted after", status.last_state)):
            ended = state.terminated if state is not None else None
            if ended is not None and ended.exit_code != 0:
                detail = f": {ended.message.strip()}" if ended.message else ""
                problems.append(f"pod {name} container {status.name} {when} {ended.reason} (exit code {ended.exit_code}){detail}")
        waiting = status.state.waiting if status.state is not None else None
        if waiting is not None and waiting.reason not in STARTING:
            detail = f": {waiting.message}" if waiting.message else ""
            problems.append(f"pod {name} container {status.name} waiting: {waiting.reason}{detail}")
    return problems


class PodLogs:
    """Each trainer pod's log, streamed to the logger as it comes (a thread per pod), with its last lines kept."""

    def __init__(self, core_api: Any, namespace: str, job_name: str) -> None:
        self.core = core_api
        self.namespace = namespace
        self.job_name = job_name
        self.tails: dict[str, collections.deque[str]] = {}
        self._threads: dict[str, threading.Thread] = {}

    def follow(self, pods: list[V1Pod]) -> None:
        """Start streaming the pods whose container has started and is not followed yet."""
        for pod in pods:
            name = pod.metadata.name
            if name in self._threads or pod.status.phase not in ("Running", "Succeeded", "Failed"):
                continue
            self.tails[name] = collections.deque(maxlen=TAIL_LINES)
            thread = threading.Thread(target=self._stream, args=(name,), name=f"logs-{name}", daemon=True)
            self._threads[name] = thread
            thread.start()

    def _stream(self, pod: str) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = self.core.read_namespaced_pod_log(
                pod, self.namespace, container=NODE, follow=True, _preload_content=False
            )
            try:
                for raw in response:
                    line = raw.decode(errors="replace").rstrip("\n")
                    self.tails[pod].append(line)
                    logger.info("[%s] %s", pod, line)
            finally:
                response.release_conn()
        except (ApiException, HTTPError) as error:
            logger.warning("log of %s unavailable: %s", pod, error)

    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds in all for the streams to end (they end with their containers)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))


def _is_true(condition: dict | None) -> bool:
    return condition is not None and condition.get("status") == "True"


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (Kubernetes stopping a cancelled run's pod) raises SystemExit, so the TrainJob is deleted."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
