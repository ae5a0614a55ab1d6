"""The cluster backends against faked Kubernetes APIs: TrainJob launcher and InferenceService canaries.

No cluster runs here, so each test fakes the API server's answers: a fake
``CustomObjectsApi``/``CoreV1Api`` that records what the backend sends and
answers with scripted (TrainJob) or simulated (InferenceService: a small model
of KServe's controller) status. What is real: every object the backends send
is validated against the CRD schemas in ``../shared/schemas`` (strict, unknown
fields rejected), the trainer pod they imply against the Kubernetes schema
(``kubernetes-validate``, strict), the training entrypoint the TrainJob runs
(executed on the staged files), the decision code (``steps.train``,
``run_rollout``, the analysis) and the PromQL built for each variant.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import kubernetes_validate
import numpy as np
import pandas as pd
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from recflow.data.dataset import Dataset, write_dataset
from recflow.data.world import generate_world, world_config
from recflow.feedback.log import FeedbackEvent, FeedbackLog
from recflow.kubernetes.inferenceservice import CanaryError, InferenceService, ServerlessCanary, StandardCanary
from recflow.kubernetes.rollout import ClusterRolloutConfig, rollout_inferenceservice
from recflow.monitoring.live import REFERENCE_FILE, SCORES_KEY
from recflow.monitoring.scores import SCORE_BUCKETS
from recflow.kubernetes.trainjob import (
    STAGING_DIR,
    TRAINJOB_ENV,
    TrainJobConfig,
    TrainJobFailed,
    TrainJobLauncher,
    TrainJobTimedOut,
    from_environment,
)
from recflow.pipeline import steps
from recflow.rollout.analysis import AnalysisConfig
from recflow.rollout.controller import RolloutConfig, read_log
from recflow.rollout.prometheus import Prometheus, VariantSelector
from recflow.training.config import TrainConfig
from recflow.training.launch import TORCHRUN_ENV, entrypoint_args
from recflow.training.train import METRICS_FILE
from recflow.training.train import main as train_main

SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas"


def crd_validator(name: str) -> jsonschema.protocols.Validator:
    path = SCHEMAS / name
    if not path.is_file():
        pytest.skip(f"CRD schema {path} absent (../shared/schemas is not part of this checkout)")
    schema = json.loads(path.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def assert_valid(validator: jsonschema.protocols.Validator, document: dict) -> None:
    errors = [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]
    assert not errors, "\n".join(errors)


# --- TrainJob -----------------------------------------------------------------------------------


class FakeTrainerApi:
    """``CustomObjectsApi`` for TrainJobs, faked: validates and records what is created and deleted,
    and answers each ``get`` with the next scripted status (the last one repeats). A script entry
    may be a function of the created TrainJob, run at that poll (the trainer's pods running, or an
    interruption arriving)."""

    def __init__(self, script: list) -> None:
        self.validator = crd_validator("trainer.kubeflow.org_v1alpha1_trainjob.json")
        self.script = script
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.gets = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        assert_valid(self.validator, body)
        assert body["metadata"]["namespace"] == namespace
        self.created.append(copy.deepcopy(body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        entry = self.script[min(self.gets, len(self.script) - 1)]
        self.gets += 1
        status = entry(self.created[-1]) if callable(entry) else entry
        return {**self.created[-1], "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy):
        self.deleted.append(name)


class LogStream:
    """What ``read_namespaced_pod_log(..., _preload_content=False)`` returns: bytes lines, then the connection back."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.released = False

    def __iter__(self):
        return iter(f"{line}\n".encode() for line in self.lines)

    def release_conn(self) -> None:
        self.released = True


class FakeCoreApi:
    """``CoreV1Api``, faked: the trainer pods (real ``kubernetes.client`` models) and their logs."""

    def __init__(self, pods: list | None = None, logs: dict[str, list[str]] | None = None) -> None:
        self.pods = pods or []
        self.logs = logs or {}
        self.selectors: list[str] = []
        self.streams: list[LogStream] = []

    def list_namespaced_pod(self, namespace, label_selector):
        self.selectors.append(label_selector)
        return k8s.V1PodList(items=self.pods)

    def read_namespaced_pod_log(self, name, namespace, container, follow, _preload_content):
        assert (container, follow, _preload_content) == ("node", True, False)
        self.streams.append(LogStream(self.logs.get(name, [])))
        return self.streams[-1]


def trainer_pod(name: str, phase: str, state: k8s.V1ContainerState) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name),
        status=k8s.V1PodStatus(phase=phase, container_statuses=[
            k8s.V1ContainerStatus(name="node", image="recflow/pipeline:0.1.0", image_id="", ready=False,
                                  restart_count=0, state=state),
        ]),
    )  # fmt: skip


RUNNING = {"conditions": [{"type": "Created", "status": "True", "reason": "JobsCreationSucceeded", "message": "Succeeded to create Jobs"}]}
COMPLETE = {"conditions": [{"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": "jobset completed successfully"}]}


def launcher(tmp_path: Path, api: FakeTrainerApi, core: FakeCoreApi, **settings) -> TrainJobLauncher:
    """A launcher whose shared volume is a local directory and whose clock is the fake sleeps."""
    elapsed = [0.0]
    config = TrainJobConfig.model_validate({
        "image": "recflow/pipeline:0.1.0", "namespace": "recflow",
        "workspace": {"claim_name": "recflow-workspace", "mount_path": str(tmp_path / "volume")},
        "poll_seconds": 10, **settings,
    })  # fmt: skip
    return TrainJobLauncher(config, api, core, sleep=lambda s: elapsed.__setitem__(0, elapsed[0] + s), clock=lambda: elapsed[0])


@pytest.fixture
def training_set(tmp_path) -> Path:
    """A training-set directory as the pipeline's step writes it: a small parquet of planted clicks and its info."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 600), rng.integers(0, 20, 600)
    frame = pd.DataFrame({
        "user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items],
        "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC"), "label": ((users + items) % 2).astype(float),
        "user_clicks_7d": rng.poisson(3, 600).astype(float), "item_category": [f"c{i % 4}" for i in items],
    })  # fmt: skip
    directory = tmp_path / "training_set"
    directory.mkdir()
    frame.to_parquet(directory / steps.TRAINING_SET_FILE, index=False)
    (directory / steps.TRAINING_SET_INFO).write_text(json.dumps({"feature_service": "retrieval_v1", "rows": len(frame)}))
    return directory


SMALL = TrainConfig(epochs=1, batch_size=64, embedding_dim=4, hidden_dim=8, max_history=3)


def run_the_trainer_pods(trainjob: dict) -> dict:
    """The pods' work, done here: torchrun's entrypoint with the TrainJob's own arguments on the staged files."""
    command = trainjob["spec"]["trainer"]["command"]
    assert command[:5] == ["python", "-m", "torch.distributed.run", "--max-restarts", "1"]
    assert command[5:7] == ["-m", "recflow.training.train"]
    train_main(command[7:])
    return COMPLETE


def test_trainjob_runs_the_training_step_and_returns_its_model(tmp_path, training_set, caplog):
    """Fakes the TrainJob API (Created, then Complete once the fake pods ran the command) and one pod's log.

    The training step (``steps.train``: feature spec, config, model info)
    runs with the TrainJob launcher; the TrainJob is valid against the CRD,
    runs the training entrypoint with the staged files (executed here), on
    the Torch runtime with nodes, processes, resources, env and the workspace
    volume; the trainer pod it implies passes kubernetes-validate (strict);
    the model lands in the step's output, the log is streamed, the job and
    its staging directory are removed.
    """
    pod = trainer_pod("recflow-train-x-node-0-0-abcde", "Running", k8s.V1ContainerState(running=k8s.V1ContainerStateRunning()))
    api = FakeTrainerApi([RUNNING, run_the_trainer_pods])
    core = FakeCoreApi([pod], {pod.metadata.name: ["epoch 1/1 loss 0.69"]})
    launch = launcher(tmp_path, api, core, num_nodes=2, env={"NCCL_DEBUG": "WARN"},
                      resources_per_node={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}})  # fmt: skip
    caplog.set_level("INFO", logger="recflow.training.trainjob")

    metrics = steps.train(training_set, tmp_path / "model", SMALL, nproc_per_node=2, launcher=launch)

    (job,) = api.created
    name = job["metadata"]["name"]
    job_dir = tmp_path / "volume" / STAGING_DIR / name
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "recflow-torch"}
    assert trainer["command"][5:] == entrypoint_args(job_dir / "training_set.parquet", job_dir / "feature_spec.json",
                                                     job_dir / "model", job_dir / "train_config.json", job_dir / "checkpoints")  # fmt: skip
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 2)
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in trainer["env"]
    assert {e["name"]: e["value"] for e in trainer["env"]}.items() >= TORCHRUN_ENV.items()
    (patch,) = job["spec"]["runtimePatches"]
    pod_spec = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod_spec["volumes"] == [{"name": "recflow-workspace", "persistentVolumeClaim": {"claimName": "recflow-workspace"}}]
    assert pod_spec["containers"][0]["volumeMounts"] == [{"name": "recflow-workspace", "mountPath": str(tmp_path / "volume")}]
    trainer_pod_manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-node-0-0"}, "spec": {
        "volumes": pod_spec["volumes"],
        "containers": [{"name": "node", "image": trainer["image"], "command": trainer["command"], "env": trainer["env"],
                        "resources": trainer["resourcesPerNode"], "volumeMounts": pod_spec["containers"][0]["volumeMounts"]}],
    }}  # fmt: skip
    kubernetes_validate.validate(trainer_pod_manifest, "1.33", strict=True)

    assert metrics == json.loads((tmp_path / "model" / METRICS_FILE).read_text())
    assert (tmp_path / "model" / "model.pt").is_file()
    assert json.loads((tmp_path / "model" / steps.MODEL_INFO).read_text())["feature_service"] == "retrieval_v1"
    assert core.selectors[0] == f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=node"
    assert f"[{pod.metadata.name}] epoch 1/1 loss 0.69" in caplog.messages
    assert core.streams[0].released
    assert api.deleted == [name]
    assert not job_dir.exists()


def test_trainjob_failure_names_the_reason_and_keeps_the_job(tmp_path, training_set):
    """Fakes the TrainJob API (Created, then Failed) and a trainer pod killed for memory, with its log.

    The error carries the Failed condition's message, the pod's termination
    reason and exit code, and the pod's last log lines; the TrainJob is kept
    for ``kubectl describe`` (not deleted), the staged files are removed.
    """
    killed = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled"))
    pod = trainer_pod("recflow-train-x-node-0-0-abcde", "Failed", killed)
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "FailedJobs",
                              "message": "jobset failed: job recflow-train-x-node-0 has failed"}]}  # fmt: skip
    api = FakeTrainerApi([RUNNING, failed])
    core = FakeCoreApi([pod], {pod.metadata.name: ["loading training set", "epoch 1/1 step 10"]})

    with pytest.raises(TrainJobFailed) as raised:
        steps.train(training_set, tmp_path / "model", SMALL, nproc_per_node=1, launcher=launcher(tmp_path, api, core))

    message = str(raised.value)
    name = api.created[0]["metadata"]["name"]
    assert f"TrainJob recflow/{name} failed: FailedJobs: jobset failed" in message
    assert f"pod {pod.metadata.name} container node terminated OOMKilled (exit code 137)" in message
    assert "epoch 1/1 step 10" in message
    assert f"kubectl -n recflow describe trainjob {name}" in message
    assert api.deleted == []
    assert not (tmp_path / "volume" / STAGING_DIR / name).exists()


def test_trainjob_watch_times_out_cleanly(tmp_path, training_set):
    """Fakes a TrainJob that never finishes, its pod stuck pulling the image; the clock is the fake sleeps.

    After ``timeout_seconds`` the launcher raises a timeout that names the
    stuck pod's reason, and deletes the TrainJob.
    """
    waiting = k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="ImagePullBackOff",
                                                                       message='Back-off pulling image "recflow/pipeline:0.1.0"'))  # fmt: skip
    api = FakeTrainerApi([RUNNING])
    core = FakeCoreApi([trainer_pod("recflow-train-x-node-0-0-abcde", "Pending", waiting)])
    launch = launcher(tmp_path, api, core, timeout_seconds=60)

    with pytest.raises(TrainJobTimedOut, match=r"did not finish within 60 s \(Created=True\); deleted it\n.*ImagePullBackOff"):
        steps.train(training_set, tmp_path / "model", SMALL, nproc_per_node=1, launcher=launch)

    assert api.gets == 7  # polls at 0, 10, ..., 60 s
    assert api.created[0]["spec"]["activeDeadlineSeconds"] == 60
    assert api.deleted == [api.created[0]["metadata"]["name"]]


def interrupt_with_ctrl_c(trainjob: dict) -> dict:
    raise KeyboardInterrupt


def interrupt_with_sigterm(trainjob: dict) -> dict:
    os.kill(os.getpid(), signal.SIGTERM)  # what Kubernetes sends a cancelled run's pod
    return RUNNING


@pytest.mark.parametrize("interrupt, raised", [(interrupt_with_ctrl_c, KeyboardInterrupt), (interrupt_with_sigterm, SystemExit)])
def test_trainjob_is_deleted_when_interrupted(tmp_path, training_set, interrupt, raised):
    """Fakes the TrainJob API; the second poll is interrupted by Ctrl-C or by a real SIGTERM to this process.

    The interruption propagates, the TrainJob is deleted, the staged files
    are removed, and the SIGTERM handler that was in place is restored.
    """
    api = FakeTrainerApi([RUNNING, interrupt])
    handler = signal.getsignal(signal.SIGTERM)

    with pytest.raises(raised):
        steps.train(training_set, tmp_path / "model", SMALL, nproc_per_node=1, launcher=launcher(tmp_path, api, FakeCoreApi()))

    assert api.deleted == [api.created[0]["metadata"]["name"]]
    assert list((tmp_path / "volume" / STAGING_DIR).iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == handler


def test_trainjob_settings_come_from_the_environment(monkeypatch):
    """No API is called: the settings the cluster's ConfigMap puts in $RECFLOW_TRAINJOB are parsed and checked.

    Absent, training stays local; YAML is read; a misspelt key or a variable
    the Torch runtime owns is refused with its name.
    """
    monkeypatch.delenv(TRAINJOB_ENV, raising=False)
    assert from_environment() is None
    monkeypatch.setenv(TRAINJOB_ENV, "image: recflow/pipeline:0.1.0\nnamespace: recflow\nnum_nodes: 3\n"
                                     "workspace: {claim_name: recflow-workspace, mount_path: /recflow/workspace}\n")  # fmt: skip
    monkeypatch.setattr("recflow.kubernetes.trainjob.load_client_config", lambda: None)
    assert from_environment().config.num_nodes == 3
    with pytest.raises(ValueError, match="num_node"):
        TrainJobConfig.model_validate({"image": "i", "workspace": {"claim_name": "c", "mount_path": "/w"}, "num_node": 2})
    with pytest.raises(ValueError, match="PET_MASTER_ADDR"):
        TrainJobConfig.model_validate({"image": "i", "workspace": {"claim_name": "c", "mount_path": "/w"},
                                       "env": {"PET_MASTER_ADDR": "x"}})  # fmt: skip


# --- InferenceService ------------------------------------------------------------------------------

STABLE_URI = "s3://recflow/models/20250101-000000-aaaaaaaa"
CANDIDATE_URI = "s3://recflow/models/20250108-000000-bbbbbbbb"
BROKEN_URI = "s3://recflow/models/20250108-000000-broken00"


# The two ways a predictor names its bundle: KServe's model spec, or (as the chart deploys the
# recommender) a custom container whose STORAGE_URI the storage initializer downloads.
MODEL = {"modelFormat": {"name": "recflow"}, "runtime": "recflow-recommender", "protocolVersion": "v2",
         "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}}  # fmt: skip
FEATURE_STORE_ENV = {"name": "FEAST_REGISTRY_URL", "valueFrom": {"secretKeyRef": {"name": "recflow-postgres", "key": "url"}}}


def container(uri: str) -> dict:
    return {"name": "kserve-container", "image": "recflow/serving:0.1.0", "args": ["--bundle", "/mnt/models"],
            "env": [{"name": "STORAGE_URI", "value": uri}, FEATURE_STORE_ENV], "ports": [{"name": "http1", "containerPort": 8080}]}  # fmt: skip


def serving_fields(form: str, uri: str) -> dict:
    """What a predictor of ``form`` holds to serve ``uri``."""
    return {"model": {**MODEL, "storageUri": uri}} if form == "model" else {"containers": [container(uri)]}


def base_isvc(mode: str, form: str, stable: str = STABLE_URI) -> dict:
    """The recommender InferenceService as deployed, serving the stable bundle."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "recommender", "namespace": "recflow", "generation": 1,
                     "annotations": {"serving.kserve.io/deploymentMode": mode}},
        "spec": {"predictor": {"minReplicas": 1, "labels": {"app.kubernetes.io/component": "model-server"},
                               **serving_fields(form, stable)}},
    }  # fmt: skip


def served_uri(predictor: dict) -> str:
    if "model" in predictor:
        return predictor["model"]["storageUri"]
    (storage,) = [v["value"] for v in predictor["containers"][0]["env"] if v["name"] == "STORAGE_URI"]
    return storage


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, what the API server applies for application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeKServe:
    """``CustomObjectsApi`` for one InferenceService, faked with a small model of KServe's controller.

    The InferenceService names its bundle in a custom container's ``STORAGE_URI``
    (as the chart deploys it) or in ``model.storageUri`` (``form``).

    A patch is applied as a merge patch, the result validated against the
    CRD, the generation bumped and the patch recorded. The controller
    reconciles on the next ``get`` (status lags one poll). Serverless: a new
    ``storageUri`` makes a new revision (ready unless it is ``BROKEN_URI``),
    ``canaryTrafficPercent`` splits traffic between it and the last rolled-out
    revision, and without it the latest ready revision takes 100 % and is
    rolled out. Standard: each ``spec.canary`` entry gets a status with its
    percent, ready unless broken.
    """

    def __init__(self, mode: str, form: str = "container", stable: str = STABLE_URI) -> None:
        self.validator = crd_validator("serving.kserve.io_v1beta1_inferenceservice.json")
        self.mode = mode
        self.isvc = base_isvc(mode, form, stable)
        self.patches: list[dict] = []
        self.revisions: list[tuple[str, str]] = []  # (name, storageUri)
        self.rolled_out = ""
        self.reconcile()
        assert_valid(self.validator, self.isvc)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, namespace, plural, name) == ("serving.kserve.io", "v1beta1", "recflow", "inferenceservices", "recommender")
        self.reconcile()
        assert_valid(self.validator, self.isvc)
        return copy.deepcopy(self.isvc)

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        assert (group, version, namespace, plural, name) == ("serving.kserve.io", "v1beta1", "recflow", "inferenceservices", "recommender")
        self.patches.append(copy.deepcopy(body))
        patched = merge_patch(self.isvc, body)
        assert_valid(self.validator, patched)
        patched["metadata"]["generation"] += 1
        self.isvc = patched
        return copy.deepcopy(self.isvc)

    def reconcile(self) -> None:
        spec, ready = self.isvc["spec"], True
        status: dict = {"observedGeneration": self.isvc["metadata"]["generation"]}
        if self.mode == "Serverless":
            uri = served_uri(spec["predictor"])
            if not self.revisions or self.revisions[-1][1] != uri:
                self.revisions.append((f"recommender-predictor-{len(self.revisions) + 1:05d}", uri))
            latest = self.revisions[-1][0]
            ready = self.revisions[-1][1] != BROKEN_URI
            latest_ready = next(name for name, uri in reversed(self.revisions) if uri != BROKEN_URI)
            percent = spec["predictor"].get("canaryTrafficPercent")
            if percent is None and ready:
                self.rolled_out = latest
            if percent is None or latest == self.rolled_out:
                traffic = [{"revisionName": latest_ready, "percent": 100, "latestRevision": latest_ready == latest}]
            else:
                traffic = [{"revisionName": latest, "percent": percent, "latestRevision": True, "tag": "latest"},
                           {"revisionName": self.rolled_out, "percent": 100 - percent, "latestRevision": False, "tag": "prev"}]  # fmt: skip
            status["components"] = {"predictor": {"latestCreatedRevision": latest, "latestReadyRevision": latest_ready,
                                                  "latestRolledoutRevision": self.rolled_out, "traffic": traffic}}  # fmt: skip
            status["deploymentMode"] = "Serverless"
        else:
            canaries = [{"name": c["predictor"]["name"], "ready": served_uri(c["predictor"]) != BROKEN_URI,
                         "trafficPercent": c["trafficPercent"]} for c in spec.get("canary", [])]  # fmt: skip
            if canaries:
                status["canaryStatuses"] = canaries
            ready = all(c["ready"] for c in canaries)
            status["deploymentMode"] = "RawDeployment"
        status["conditions"] = [{"type": "Ready", "status": str(ready),
                                 **({} if ready else {"reason": "RevisionFailed", "message": "model load failed: bad weights"})}]  # fmt: skip
        self.isvc["status"] = status


METRIC = re.compile(r"increase\((\w+)\{")


class FakePrometheus(Prometheus):
    """Prometheus' HTTP API, faked: each query is answered from the figures of the variant whose
    selector it contains (a query matching neither fails the test); the queries are recorded.

    Why a fake: the series it stands for are scraped from a cluster's revision or Deployment pods,
    which do not run here. A real Prometheus answering the same PromQL is tested in
    tests/rollout/test_prometheus.py, and behind the local platform's rollouts in tests/platform."""

    def __init__(self, selectors: dict[str, VariantSelector], figures: dict[str, dict]) -> None:
        super().__init__("http://prometheus.invalid")
        self.selectors = selectors
        self.figures = figures
        self.queries: list[tuple[str, str]] = []

    def query(self, promql: str) -> list[dict]:
        (variant,) = [v for v, s in self.selectors.items() if s.server in promql or s.feedback in promql]
        self.queries.append((variant, promql))
        figures = self.figures[variant]
        if "recflow_served_score_bucket" in promql:
            counts = np.cumsum(figures["score_counts"])
            return [{"metric": {"le": str(le)}, "value": [0, str(c)]} for le, c in zip([*SCORE_BUCKETS, "+Inf"], counts)]
        if promql.startswith("histogram_quantile"):
            value = figures["p99_seconds"]
        elif 'status=~"5.."' in promql:
            value = figures["errors"]
        else:
            value = figures[METRIC.search(promql).group(1)]
        return [{"metric": {}, "value": [0, str(value)]}]


HEALTHY = {"recflow_requests_total": 1000, "errors": 0, "recflow_batch_users_sum": 1000, "recflow_fallback_total": 0,
           "p99_seconds": 0.05, "recflow_feedback_impressions_total": 10000, "recflow_feedback_clicks_total": 1000,
           # 1,000 answers' feedback of 10 impressions and a click each, a cluster each
           "recflow_feedback_clusters_total": 1000, "recflow_feedback_cluster_clicks_squared_total": 1000,
           "recflow_feedback_cluster_impressions_squared_total": 100_000,
           "recflow_feedback_cluster_clicks_impressions_total": 10_000,
           "score_counts": (0,) * 10 + (100, 300, 400, 200) + (0,) * 7}  # fmt: skip
FAILING = {**HEALTHY, "errors": 300}
ROLLOUT = RolloutConfig(analysis=AnalysisConfig(steps=[5, 50, 100]), interval_seconds=30)


def cluster_rollout(tmp_path, api: FakeKServe, mode: str, selectors: dict[str, VariantSelector], canary: dict, candidate=CANDIDATE_URI):
    prometheus = FakePrometheus(selectors, {"stable": HEALTHY, "canary": canary})
    elapsed = [0.0]
    result = rollout_inferenceservice(
        candidate, ClusterRolloutConfig(prometheus_url="http://prometheus.invalid", namespace="recflow", mode=mode,
                                        poll_seconds=1, ready_timeout_seconds=10),
        ROLLOUT, tmp_path / "rollout.jsonl", api=api, prometheus=prometheus,
        sleep=lambda s: elapsed.__setitem__(0, elapsed[0] + s), clock=lambda: elapsed[0],
    )  # fmt: skip
    return result, prometheus


SERVERLESS_SELECTORS = {
    "stable": VariantSelector('namespace="recflow",serving_knative_dev_revision="recommender-predictor-00001"',
                              'variant="recommender-predictor-00001"'),
    "canary": VariantSelector('namespace="recflow",serving_knative_dev_revision="recommender-predictor-00002"',
                              'variant="recommender-predictor-00002"'),
}  # fmt: skip


@pytest.mark.parametrize("form", ["container", "model"])
def test_serverless_canary_promoted_through_run_rollout(tmp_path, form):
    """Fakes the InferenceService API (a model of KServe Serverless) and Prometheus; the rollout is real.

    ``run_rollout`` decides (healthy canary: advance 5 -> 50 -> 100, promote);
    the backend sends exactly KServe's canary patches, each valid against the
    CRD: the candidate's bundle (in the container's STORAGE_URI, the rest of
    the container kept, or in model.storageUri) with canaryTrafficPercent 0,
    each step's percent, then the percent removed, after which the canary
    revision serves all traffic as the rolled-out one. Every PromQL query
    selects one revision by ``serving_knative_dev_revision``, over the step so far.
    """
    api = FakeKServe("Serverless", form)
    result, prometheus = cluster_rollout(tmp_path, api, "serverless", SERVERLESS_SELECTORS, HEALTHY)

    assert result.outcome == "promoted"
    assert [r["action"] for r in read_log(result.log_path)] == ["advance", "advance", "promote"]
    assert api.patches == [
        {"spec": {"predictor": {"canaryTrafficPercent": 0, **serving_fields(form, CANDIDATE_URI)}}},
        {"spec": {"predictor": {"canaryTrafficPercent": 5}}},
        {"spec": {"predictor": {"canaryTrafficPercent": 50}}},
        {"spec": {"predictor": {"canaryTrafficPercent": 100}}},
        {"spec": {"predictor": {"canaryTrafficPercent": None}}},
    ]
    final = api.get_namespaced_custom_object("serving.kserve.io", "v1beta1", "recflow", "inferenceservices", "recommender")
    assert "canaryTrafficPercent" not in final["spec"]["predictor"]
    assert served_uri(final["spec"]["predictor"]) == CANDIDATE_URI
    predictor = final["status"]["components"]["predictor"]
    assert predictor["latestRolledoutRevision"] == "recommender-predictor-00002"
    assert predictor["traffic"] == [{"revisionName": "recommender-predictor-00002", "percent": 100, "latestRevision": True}]
    assert {variant for variant, _ in prometheus.queries} == {"stable", "canary"}
    assert all("[30000ms]" in promql for _, promql in prometheus.queries)  # one interval at each step, no holds
    # s3:// bundles, which this process does not read: the score check compares the live scores, and says so
    details = [c["detail"] for d in read_log(result.log_path) for c in d["checks"] if c["name"] == "score distribution"]
    assert details and all("no export-time score histogram in the stable and canary bundle" in d for d in details)


def test_serverless_canary_with_errors_rolled_back(tmp_path):
    """Fakes the InferenceService API (a model of KServe Serverless) and Prometheus (the canary answers 30 % 5xx).

    ``run_rollout`` rolls back at the first step; the patches put the percent
    to 0 and the stable storageUri back, and the stable revision serves all
    traffic again.
    """
    api = FakeKServe("Serverless")
    result, _ = cluster_rollout(tmp_path, api, "serverless", SERVERLESS_SELECTORS, FAILING)

    assert result.outcome == "rolled back"
    assert "error" in result.reason
    assert api.patches == [
        {"spec": {"predictor": {"canaryTrafficPercent": 0, **serving_fields("container", CANDIDATE_URI)}}},
        {"spec": {"predictor": {"canaryTrafficPercent": 5}}},
        {"spec": {"predictor": {"canaryTrafficPercent": 0}}},
        {"spec": {"predictor": {"canaryTrafficPercent": 0, **serving_fields("container", STABLE_URI)}}},
    ]
    final = api.get_namespaced_custom_object("serving.kserve.io", "v1beta1", "recflow", "inferenceservices", "recommender")
    assert final["spec"]["predictor"] == base_isvc("Serverless", "container")["spec"]["predictor"] | {"canaryTrafficPercent": 0}
    traffic = final["status"]["components"]["predictor"]["traffic"]
    assert {t["revisionName"]: t["percent"] for t in traffic}["recommender-predictor-00001"] == 100


def test_canary_that_never_gets_ready_is_rolled_back_with_the_reason(tmp_path):
    """Fakes the InferenceService API (KServe Serverless) with a candidate whose revision fails to load.

    No traffic is moved: the wait for the revision runs out with the Ready
    condition's reason in the error, and the canary is rolled back.
    """
    api = FakeKServe("Serverless")
    with pytest.raises(CanaryError, match="not canary revision ready within 10 s: Ready=False RevisionFailed: model load failed"):
        cluster_rollout(tmp_path, api, "serverless", SERVERLESS_SELECTORS, HEALTHY, candidate=BROKEN_URI)
    assert api.patches == [
        {"spec": {"predictor": {"canaryTrafficPercent": 0, **serving_fields("container", BROKEN_URI)}}},
        {"spec": {"predictor": {"canaryTrafficPercent": 0, **serving_fields("container", STABLE_URI)}}},
    ]


@pytest.mark.parametrize("canary, outcome, code", [(HEALTHY, "promoted", 0), (FAILING, "rolled back", 1)])
def test_recflow_rollout_on_a_cluster_from_the_command_line(tmp_path, monkeypatch, canary, outcome, code):
    """``recflow rollout --cluster``: the rollout above from the command line, its records kept as the local one's.

    Fakes the InferenceService API (KServe Serverless) and Prometheus as above, there being no
    cluster here: the Kubernetes client's configuration is skipped and its API object is the fake.
    The settings come from the files the command names; the decision log and the HTML report land
    in the workspace's rollouts directory, and the exit status says promoted (0) or rolled back (1).
    """
    import recflow.kubernetes.rollout as cluster_rollout_module
    from recflow.cli import main

    api = FakeKServe("Serverless")
    prometheus = FakePrometheus(SERVERLESS_SELECTORS, {"stable": HEALTHY, "canary": canary})
    monkeypatch.setattr("recflow.kubernetes.load_client_config", lambda: None)
    monkeypatch.setattr(k8s, "CustomObjectsApi", lambda: api)
    monkeypatch.setattr(cluster_rollout_module, "Prometheus", lambda url: prometheus)
    workspace = tmp_path / "ws"
    command = cli_rollout_command(tmp_path, workspace, CANDIDATE_URI)

    assert main(command) == code
    (report,) = workspace.glob("platform/rollouts/*/rollout.html")
    actions = [record["action"] for record in read_log(report.parent / "rollout.jsonl")]
    assert actions == (["advance", "advance", "promote"] if outcome == "promoted" else ["rollback"])
    assert served_uri(api.isvc["spec"]["predictor"]) == (CANDIDATE_URI if outcome == "promoted" else STABLE_URI)
    assert {variant for variant, _ in prometheus.queries} == {"stable", "canary"}
    # a fault drill is the local platform's: refused before anything is patched
    patches = len(api.patches)
    assert main([*command, "--inject-fault", "errors"]) == 2
    assert len(api.patches) == patches


def cli_rollout_command(tmp_path, workspace, candidate_uri: str) -> list[str]:
    """``recflow rollout --cluster`` arguments, with the cluster and rollout settings files they name."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"prometheus_url": "http://prometheus.invalid", "namespace": "recflow",
                                       "poll_seconds": 0.01, "ready_timeout_seconds": 10}))  # fmt: skip
    settings = tmp_path / "rollout.yaml"
    settings.write_text(yaml.safe_dump({"interval_seconds": 0.01}))
    return ["rollout", "--workspace", str(workspace), "--candidate", candidate_uri, "--cluster", str(cluster),
            "--config", str(settings), "--steps", "5,50,100"]  # fmt: skip


def test_recflow_rollout_on_a_cluster_reads_the_bundles_on_a_mounted_workspace_volume(tmp_path, monkeypatch, capsys):
    """``recflow rollout --cluster --workspace-volume PATH``, run in a pod that mounts the workspace volume:
    both bundles are ``pvc://recflow-workspace/...``, so the score check reads their export-time score
    histograms under PATH; without the flag it compares live scores with live scores and says so.

    Three stand-ins, each for what only a cluster has: the kubeconfig (``load_client_config``), the
    API server's InferenceService answers (``CustomObjectsApi``: KServe Serverless), and the cluster's
    Prometheus, whose series carry the labels of KServe pods (``FakePrometheus`` checks each query's
    selectors; the same queries, with the local platform's selectors, run against a real Prometheus
    in ``tests/rollout/test_prometheus.py``).
    The CLI, the volume's bundles and their score histograms, and the rollout's decisions are real.
    """
    import recflow.kubernetes.rollout as cluster_rollout_module
    from recflow.cli import main

    volume = tmp_path / "volume"
    stable_uri, candidate_uri = (f"pvc://recflow-workspace/models/{v}" for v in ("20250101-000000-aaaaaaaa", "20250108-000000-bbbbbbbb"))
    for uri in (stable_uri, candidate_uri):
        bundle = volume / uri.removeprefix("pvc://recflow-workspace/")
        bundle.mkdir(parents=True)
        scores = {"buckets": list(SCORE_BUCKETS), "counts": list(HEALTHY["score_counts"]), "answers": 1000}
        (bundle / REFERENCE_FILE).write_text(json.dumps({SCORES_KEY: scores}))
    monkeypatch.setattr("recflow.kubernetes.load_client_config", lambda: None)
    monkeypatch.setattr(cluster_rollout_module, "Prometheus",
                        lambda url: FakePrometheus(SERVERLESS_SELECTORS, {"stable": HEALTHY, "canary": HEALTHY}))  # fmt: skip

    def score_details(extra: list[str]) -> list[str]:
        monkeypatch.setattr(k8s, "CustomObjectsApi", lambda: FakeKServe("Serverless", stable=stable_uri))
        workspace = tmp_path / f"ws{len(extra)}"
        assert main([*cli_rollout_command(tmp_path, workspace, candidate_uri), *extra]) == 0
        (log,) = workspace.glob("platform/rollouts/*/rollout.jsonl")
        return [c["detail"] for d in read_log(log) for c in d["checks"] if c["name"] == "score distribution"]

    mounted = score_details(["--workspace-volume", str(volume)])
    assert mounted and all("placed among each model's export-time scores" in detail for detail in mounted)
    unmounted = score_details([])
    assert unmounted and all("no export-time score histogram in the stable and canary bundle" in d for d in unmounted)
    # a mount path that is not there, or the flag without a cluster, is refused with the reason
    command = cli_rollout_command(tmp_path, tmp_path / "ws", candidate_uri)
    assert main([*command, "--workspace-volume", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["rollout", "--workspace", str(tmp_path / "ws"), "--candidate", str(volume), "--workspace-volume", str(volume)]) == 2
    assert "it goes with --cluster" in capsys.readouterr().err


@pytest.fixture(scope="module")
def feedback_base(tmp_path_factory):
    """A tiny world's dataset: what a stable model's card says it was trained on."""
    world = generate_world(world_config("tiny"))
    path = tmp_path_factory.mktemp("retrain") / "base"
    return write_dataset(path, world.events, world.items, world.users, {"source": "world", "scale": "tiny", "seed": 0})


def model_card(version: str, dataset) -> dict:
    return {"version": version, "created_at": "2026-11-30T00:00:00+00:00", "feature_service": "ranking_v1",
            "metrics": {"model": {}}, "data": {"dataset": str(dataset)}}  # fmt: skip


@pytest.mark.parametrize("blessed", [True, False])
def test_retraining_on_a_cluster_runs_on_kubeflow_and_rolls_the_new_model_out(tmp_path, monkeypatch, feedback_base, blessed):
    """``recflow retrain`` in the chart's pod: the stable model is the one the InferenceService serves
    (``pvc://recflow-workspace/models/<version>``, the volume mounted as the workspace); the feedback
    logged there is folded into its dataset, the pipeline runs on Kubeflow Pipelines on that data and
    workspace, and the model its export registers is rolled out on the InferenceService.

    Fakes, there being no cluster here: the InferenceService API and Prometheus as above, and Kubeflow
    Pipelines, whose run, once waited for, has registered a new bundle (``blessed``) or none
    (``submit`` itself is tested in test_submit_pipeline.py).
    """
    from recflow.feedback.service import LOG_FILE
    from recflow.kubernetes.submit import Submitted
    from recflow.pipeline.registry import ModelRegistry
    from recflow.pipeline.retrain import RetrainConfig, retrain

    workspace = tmp_path / "workspace"
    registry = ModelRegistry(workspace / "models")
    stable_version, candidate_version = "20250101-000000-aaaaaaaa", "20250108-000000-bbbbbbbb"
    for version in (stable_version, candidate_version):
        (tmp_path / version).mkdir()
        (tmp_path / version / "model_card.json").write_text(json.dumps(model_card(version, feedback_base.path)))
        # the served-score histogram export writes (the same for both: HEALTHY's live scores, at export)
        scores = {"buckets": list(SCORE_BUCKETS), "counts": list(HEALTHY["score_counts"]), "answers": 1000}
        (tmp_path / version / REFERENCE_FILE).write_text(json.dumps({SCORES_KEY: scores}))
    registry.register(tmp_path / stable_version, model_card(stable_version, feedback_base.path))
    with FeedbackLog(workspace / LOG_FILE) as log:
        log.append([FeedbackEvent(event_id=f"live-{n}", user_id="u1", item_id="i1", clicked=n % 2 == 0,
                                  event_timestamp=pd.Timestamp("2026-11-30T12:00:00Z") + pd.Timedelta(seconds=n),
                                  variant="stable", model_version=stable_version) for n in range(20)])  # fmt: skip

    api = FakeKServe("Serverless", stable=f"pvc://recflow-workspace/models/{stable_version}")
    prometheus = FakePrometheus(SERVERLESS_SELECTORS, {"stable": HEALTHY, "canary": HEALTHY})
    submitted = []

    def submit(host, parameters, workspace=None, client=None):
        submitted.append((host, parameters, workspace))
        return Submitted("run-1", "pipeline-1", "version-1", "experiment-1", f"{host}/#/runs/details/run-1")

    class KubeflowPipelines:
        def __init__(self, host):
            assert host == "http://ml-pipeline.kubeflow:8888"

        def wait_for_run_completion(self, run_id, timeout):
            assert run_id == "run-1" and timeout == 180 * 60
            if blessed:  # what the run's export step does
                registry.register(tmp_path / candidate_version, model_card(candidate_version, "unused"))
            return SimpleNamespace(state="SUCCEEDED")

    monkeypatch.setattr("recflow.kubernetes.submit.submit", submit)
    monkeypatch.setattr("kfp.Client", KubeflowPipelines)
    monkeypatch.setattr("recflow.kubernetes.load_client_config", lambda: None)
    monkeypatch.setattr(k8s, "CustomObjectsApi", lambda: api)
    monkeypatch.setattr("recflow.kubernetes.rollout.Prometheus", lambda url: prometheus)
    config = RetrainConfig(
        host="http://ml-pipeline.kubeflow:8888",
        cluster=ClusterRolloutConfig(prometheus_url="http://prometheus.invalid", namespace="recflow",
                                     poll_seconds=0.01, ready_timeout_seconds=10),
        rollout=RolloutConfig(analysis=AnalysisConfig(steps=[5, 50, 100]), interval_seconds=0.01),
    )  # fmt: skip

    result = retrain(workspace, config, "drift")

    # the folded data is on the workspace volume, and the run reads it there
    (host, parameters, run_workspace) = submitted[0]
    assert result.dataset.parent == (workspace / "datasets").resolve() and result.feedback_events == 20
    assert parameters.data_source == str(result.dataset) and parameters.test_days == 1
    assert run_workspace == str(workspace.resolve()) and result.run.endswith("/#/runs/details/run-1")
    assert Dataset(result.dataset).manifest["feedback_folds"][-1]["last_sequence"] == 20
    if blessed:
        candidate_uri = f"pvc://recflow-workspace/models/{candidate_version}"
        assert result.blessed and result.rollout.outcome == "promoted"
        assert served_uri(api.isvc["spec"]["predictor"]) == candidate_uri
        assert result.rollout_report.is_file() and result.rollout_report.is_relative_to(workspace.resolve())
        # both bundles are on the volume mounted here: each model is judged against its own export-time scores
        checks = [c for d in read_log(result.rollout.log_path) for c in d["checks"] if c["name"] == "score distribution"]
        assert checks and all("placed among each model's export-time scores" in c["detail"] for c in checks)
    else:
        assert not result.blessed and result.rollout is None and api.patches == []


def test_retraining_on_kubeflow_needs_the_cluster_to_roll_out_on():
    from recflow.pipeline.retrain import RetrainConfig

    with pytest.raises(ValueError, match="host and cluster go together"):
        RetrainConfig(host="http://ml-pipeline.kubeflow:8888")
    with pytest.raises(ValueError, match="host and cluster go together"):
        RetrainConfig(cluster=ClusterRolloutConfig(prometheus_url="http://prometheus.monitoring:9090"))


def test_the_drift_monitor_follows_the_inference_services_stable_variant(monkeypatch):
    """The variant the monitor follows is the rolled-out revision through a canary until the promotion
    (Serverless), the stable predictor's Deployment (Standard), and the last one read while the API
    does not answer. Faked, there being no API server here: the InferenceService API (the model of
    KServe above) and the pod's namespace (read from a service-account file only a pod has)."""
    from recflow.monitoring.service import cluster_stable_variant

    monkeypatch.setattr("recflow.kubernetes.current_namespace", lambda: "recflow")
    api = FakeKServe("Serverless")
    stable = cluster_stable_variant("recommender", api)
    assert stable() == "recommender-predictor-00001"
    canary = ServerlessCanary(InferenceService("recommender", "recflow", api, poll_seconds=0, sleep=lambda s: None))
    canary.start_canary(CANDIDATE_URI)
    canary.set_canary_percent(50)
    assert stable() == "recommender-predictor-00001"
    canary.promote()
    assert stable() == "recommender-predictor-00002" == canary.selectors()["canary"].feedback.split('"')[1]

    def unreachable(*args):
        raise ApiException(status=503, reason="Service Unavailable")

    monkeypatch.setattr(api, "get_namespaced_custom_object", unreachable)
    assert stable() == "recommender-predictor-00002"

    raw = FakeKServe("RawDeployment")
    assert cluster_stable_variant("recommender", raw)() == "recommender-predictor"
    assert StandardCanary(InferenceService("recommender", "recflow", raw)).deployment(None) == "recommender-predictor"


def test_serverless_backend_refuses_raw_deployment_mode():
    """Fakes an InferenceService in RawDeployment mode: canaryTrafficPercent would be ignored, so nothing is patched."""
    api = FakeKServe("RawDeployment")
    backend = ServerlessCanary(InferenceService("recommender", "recflow", api))
    with pytest.raises(CanaryError, match="RawDeployment mode, which ignores canaryTrafficPercent"):
        backend.start_canary(CANDIDATE_URI)
    assert api.patches == [] and not backend.started


CANARY_NAME = "c" + __import__("hashlib").sha256(CANDIDATE_URI.encode()).hexdigest()[:8]
STANDARD_SELECTORS = {
    "stable": VariantSelector('namespace="recflow",pod=~"recommender-predictor-[a-z0-9]+-[a-z0-9]+"', 'variant="recommender-predictor"'),
    "canary": VariantSelector(f'namespace="recflow",pod=~"recommender-{CANARY_NAME}-predictor-[a-z0-9]+-[a-z0-9]+"',
                              f'variant="recommender-{CANARY_NAME}-predictor"'),
}  # fmt: skip


@pytest.mark.parametrize("form", ["container", "model"])
@pytest.mark.parametrize("canary, outcome", [(HEALTHY, "promoted"), (FAILING, "rolled back")])
def test_standard_mode_canary_through_run_rollout(tmp_path, canary, outcome, form):
    """Fakes the InferenceService API (a model of KServe >= 0.20 Standard mode) and Prometheus.

    The backend drives ``spec.canary[]``: a named canary predictor (the
    stable container or model spec with the candidate's bundle) whose
    trafficPercent follows the steps; promotion makes it the predictor and
    empties the list, rollback empties the list. Every patch is valid against
    the CRD (which wants a canary model's container name), and the PromQL
    tells the variants apart by their Deployments' pod names.
    """
    api = FakeKServe("RawDeployment", form)
    result, prometheus = cluster_rollout(tmp_path, api, "standard", STANDARD_SELECTORS, canary)

    fields = serving_fields(form, CANDIDATE_URI)
    canary_predictor = {"name": CANARY_NAME, **({"model": {"name": "kserve-container", **fields["model"]}} if form == "model" else fields)}

    def at(percent):
        return {"spec": {"canary": [{"trafficPercent": percent, "predictor": canary_predictor}]}}

    assert result.outcome == outcome
    if outcome == "promoted":
        assert api.patches == [at(0), at(5), at(50), at(100), {"spec": {"predictor": canary_predictor, "canary": []}}]
        final = api.get_namespaced_custom_object("serving.kserve.io", "v1beta1", "recflow", "inferenceservices", "recommender")
        assert final["spec"]["predictor"]["name"] == CANARY_NAME
        assert served_uri(final["spec"]["predictor"]) == CANDIDATE_URI
        assert final["spec"]["predictor"]["minReplicas"] == 1
    else:
        assert api.patches == [at(0), at(5), at(0), {"spec": {"canary": []}}]
    assert {variant for variant, _ in prometheus.queries} == {"stable", "canary"}


def test_a_refused_patch_names_the_api_servers_reason():
    """Fakes an API server that rejects ``spec.canary`` as an unknown field (KServe before 0.20)."""

    class OldKServe(FakeKServe):
        def patch_namespaced_custom_object(self, *args):
            raise ApiException(status=422, reason="Unprocessable Entity")

    backend = StandardCanary(InferenceService("recommender", "recflow", OldKServe("RawDeployment")))
    with pytest.raises(CanaryError, match="recflow/recommender refused .*Unprocessable Entity"):
        backend.start_canary(CANDIDATE_URI)
