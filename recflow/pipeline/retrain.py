"""Retraining: when live traffic drifts (or on a schedule), train on what was learned since and roll the model out.

    recflow retrain [--workspace .recflow] [--watch] [--config retrain.yaml]

One retraining (:func:`retrain`):

1. **Fold the feedback in.** The stable model's training dataset plus the
   feedback log's events since that dataset was made become a new dataset
   (:func:`fold_feedback`), so the new model sees the tastes the old one
   missed. The synthetic world's calendar lies in the past, so the live
   events are replayed, in order, over the days after the dataset's last
   one: the run trains on all but the last of them and evaluates on that
   one (``test_days=1``); the dataset records the log position it holds,
   and the next fold starts after it (no event is trained on twice). The
   history snapshots of those days carry that position too
   (:func:`recflow.features.compute.compute_features`), so the feedback
   service replaying its log after a materialization skips those clicks.
2. **Run the pipeline** on it: ``kfp.local`` (:func:`run_pipeline`), the
   same pipeline and export as ``recflow pipeline run``; on a cluster
   (``host`` and ``cluster`` set: the process runs in a pod that mounts the
   workspace volume, as the chart runs it) the run is submitted to Kubeflow
   Pipelines (:func:`recflow.kubernetes.submit.submit`) and waited for; its
   export registers the model in the same workspace.
   The gate checks the lift over popularity but, by default, not the
   regression against the stable model: the held-out day is feedback on the
   stable model's own lists (users only click what they are shown), so any
   other model loses that comparison offline. On the demo world the
   retrained model scored NDCG@10 0.469 there against the stable's 0.485,
   while both beat popularity (0.427). The canary compares the two where it
   is fair, on the same live users.
3. **Hand a blessed model to the rollout controller**
   (:func:`recflow.platform.rollout.rollout`, on a cluster
   :func:`recflow.kubernetes.rollout.rollout_with_report` on the
   InferenceService), which promotes it or rolls it back on live evidence. A
   model the gate did not bless is not rolled out.

The stable model is the one the local platform serves as ``stable``, on a
cluster the bundle the InferenceService's predictor names
(``pvc://recflow-workspace/models/<version>``).

:func:`watch` is the trigger: it reads the drift verdict the monitor
exports (``recflow_drift_detected{job="monitor"}``) from Prometheus (the
platform's, or ``cluster.prometheus_url``), the same query on the local
platform and on a cluster, and retrains when it is
1, or when ``every_hours`` have passed, never twice within
``cooldown_minutes``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recflow.data.dataset import FEEDBACK_FOLDS, Dataset, write_dataset
from recflow.evaluation.gate import GateConfig
from recflow.feedback.log import FeedbackLog
from recflow.kubernetes.rollout import ClusterRolloutConfig
from recflow.pipeline.parameters import DEFAULT_GATE
from recflow.rollout.controller import RolloutConfig, RolloutResult

log = logging.getLogger(__name__)

DATASETS_DIR = "datasets"
# A retraining's dataset is <workspace>/datasets/retrain-<UTC time it started>: the record of when
# the last one ran, which the trigger's cooldown reads back after a restart.
RETRAIN_PREFIX, RETRAIN_TIME = "retrain-", "%Y%m%d-%H%M%S"
# The dataset manifest's record of the feedback folded into it, oldest first:
# where each fold's events start and the last log position each holds.
FOLDS_KEY = FEEDBACK_FOLDS
DRIFT_QUERY = 'max(recflow_drift_detected{job="monitor"})'
# Pipeline parameters a retraining sets itself: its dataset, and the last feedback day held out.
RETRAINING_PARAMETERS = {"data_source", "test_days", "gate"}


class RetrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    on_drift: bool = Field(True, description="Retrain when the monitor reports drift")
    every_hours: float | None = Field(None, gt=0, description="Also retrain on this schedule; unset: drift only")
    cooldown_minutes: float = Field(30.0, ge=0, description="No second retraining within this long of the last")
    poll_seconds: float = Field(10.0, gt=0, description="How often the trigger reads the drift verdict")
    fold_days: int = Field(2, ge=2, description="Days the feedback is spread over; the last is held out")
    gate: GateConfig = Field(
        default_factory=lambda: GateConfig.model_validate_json(DEFAULT_GATE).model_copy(
            update={"max_regression_vs_blessed": {}}
        ),
        description="The retrained model's blessing gate; by default no offline comparison with the stable model "
        "(see the module docstring): the canary compares them on live traffic",
    )
    host: str | None = Field(
        None, description="A Kubeflow Pipelines host: submit there instead of kfp.local (with cluster)"
    )
    cluster: ClusterRolloutConfig | None = Field(
        None, description="On a cluster (with host): the InferenceService whose stable model is retrained and where "
        "a blessed one is rolled out, and the cluster's Prometheus (the drift verdict, the canary analysis)",
    )
    run_timeout_minutes: float = Field(180.0, gt=0, description="On a cluster: how long to wait for the pipeline run")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Pipeline parameters for the run (data_source and test_days are set here)"
    )
    rollout: RolloutConfig = RolloutConfig()

    @model_validator(mode="after")
    def _cluster_and_host_together(self) -> RetrainConfig:
        if (self.host is None) != (self.cluster is None):
            raise ValueError("host and cluster go together: a run on Kubeflow Pipelines reads the folded data from "
                             "the cluster's workspace volume, and its model is rolled out on the cluster")  # fmt: skip
        return self

    @field_validator("parameters")
    @classmethod
    def _not_the_retrainings_own(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(RETRAINING_PARAMETERS & set(parameters))
        if owned:
            raise ValueError(f"{owned}: set by the retraining (its dataset, test_days 1, and its own gate setting)")
        return parameters


@dataclass(frozen=True)
class RetrainResult:
    reason: str
    dataset: Path
    feedback_events: int
    blessed: bool
    bundle: Path | None
    rollout: RolloutResult | None
    rollout_report: Path | None
    run: str  # the local run directory, or the Kubeflow run id

    def summary(self) -> str:
        lines = [f"retraining ({self.reason}): {self.feedback_events} feedback events folded into {self.dataset}",
                 f"pipeline run: {self.run}", f"blessed: {self.blessed}"]  # fmt: skip
        if self.rollout is not None:
            lines.append(f"rollout: {self.rollout.outcome} ({self.rollout.reason}), report {self.rollout_report}")
        return "\n".join(lines)


def fold_feedback(base: Dataset, feedback: FeedbackLog, out: Path, days: int = 2) -> tuple[Dataset, int]:
    """``base`` plus the feedback logged after the position ``base`` holds, as a new dataset at ``out``.

    The events keep their order and are spread evenly over ``days`` days from
    the day after ``base``'s last one: with the pipeline holding out its last
    day for evaluation (``test_days=1``, :class:`RetrainConfig`), the new
    model trains on the earlier part of the feedback and both it and the
    stable model are judged on the later part. Returns the dataset and the
    number of events folded.
    """
    folds = base.manifest.get(FOLDS_KEY, [])
    held = folds[-1]["last_sequence"] if folds else 0
    rows = [
        (sequence, event.event_id, event.user_id, event.item_id, event.event_timestamp, event.clicked, event.dwell_seconds)
        for sequence, event in feedback.read(after=held)
    ]
    if not rows:
        raise ValueError(f"{feedback.path} holds no events after position {held}: nothing new to train on")
    new = pd.DataFrame(
        rows, columns=["sequence", "event_id", "user_id", "item_id", "event_timestamp", "clicked", "dwell_seconds"]
    )
    logged_at = pd.to_datetime(new["event_timestamp"], utc=True)
    next_day = pd.Timestamp(base.days()[-1] + dt.timedelta(days=1), tz="UTC")
    span = (logged_at.max() - logged_at.min()) / pd.Timedelta(seconds=1)
    # Positions in [0, 1) of the logged span, then onto the replay days (the last second left free).
    offset = (logged_at - logged_at.min()) / pd.Timedelta(seconds=1)
    position = offset / span if span > 0 else offset
    new["event_timestamp"] = next_day + pd.to_timedelta(position * (days * 86400 - 1), unit="s")
    new["rating"] = float("nan")
    events = pd.concat([base.read_events(), new.drop(columns="sequence")], ignore_index=True)
    fold = {
        "log": str(feedback.path),
        "first_sequence": int(new["sequence"].min()),
        "last_sequence": int(new["sequence"].max()),
        "events": len(new),
        "logged_from": logged_at.min().isoformat(),
        "logged_to": logged_at.max().isoformat(),
        "replayed_onto": next_day.date().isoformat(),
        "replayed_days": days,
    }
    manifest = {**base.manifest, FOLDS_KEY: [*folds, fold]}

    def copy_ground_truth(tmp: Path) -> None:
        if base.ground_truth_dir is not None:
            shutil.copytree(base.ground_truth_dir, tmp / base.ground_truth_dir.name)

    items = pd.read_parquet(base.path / "items.parquet")
    users = pd.read_parquet(base.path / "users.parquet")
    return write_dataset(out, events, items, users, manifest, extra=copy_ground_truth), len(new)


def training_dataset(card: dict) -> Dataset:
    """The validated dataset a model was trained on, as its card records it."""
    path = card.get("data", {}).get("dataset")
    if path is None:
        raise ValueError(f"model {card.get('version')}'s card does not record its dataset (exported before retraining existed)")
    if not Path(path, "manifest.json").is_file():
        raise FileNotFoundError(f"model {card.get('version')} was trained on {path}, which is gone")
    return Dataset(Path(path))


def retrain(workspace: str | Path, config: RetrainConfig, reason: str, feedback_log: Path | None = None) -> RetrainResult:
    """One retraining of the stable model (the local platform's, or on a cluster the InferenceService's):
    fold, run, and roll out if blessed."""
    from recflow.feedback.service import LOG_FILE

    workspace = Path(workspace).resolve()
    stable = _cluster_stable_bundle(workspace, config.cluster) if config.cluster else _platform_stable_bundle(workspace)
    base = training_dataset(json.loads((stable / "model_card.json").read_text()))
    out = workspace / DATASETS_DIR / f"{RETRAIN_PREFIX}{dt.datetime.now(dt.timezone.utc):{RETRAIN_TIME}}"
    dataset, folded = fold_feedback(base, FeedbackLog(feedback_log or workspace / LOG_FILE), out, config.fold_days)
    log.info("retraining (%s): %d feedback events folded into %s", reason, folded, dataset.path)
    parameters = {
        **config.parameters, "data_source": str(dataset.path), "test_days": 1, "gate": config.gate.model_dump_json()
    }
    if config.cluster is not None:
        return _retrain_on_cluster(workspace, config, reason, dataset.path, folded, parameters)
    from recflow.pipeline.local import run_pipeline
    from recflow.platform.rollout import rollout

    outputs = run_pipeline(workspace, **parameters)
    blessed = outputs.bundle is not None
    if not blessed:
        return RetrainResult(reason, dataset.path, folded, False, None, None, None, str(outputs.run_dir))
    result, report = rollout(workspace, outputs.bundle, config.rollout)
    return RetrainResult(reason, dataset.path, folded, True, outputs.bundle, result, report, str(outputs.run_dir))


def _platform_stable_bundle(workspace: Path) -> Path:
    from recflow.platform.state import PlatformState

    state = PlatformState.read(workspace)
    stable = state.process("stable") if state is not None else None
    if stable is None or stable.bundle is None:
        raise RuntimeError(f"no platform serves a stable model in {workspace}: run `recflow up` first")
    return stable.bundle


def _cluster_stable_bundle(workspace: Path, cluster: ClusterRolloutConfig) -> Path:
    """The bundle the InferenceService's predictor serves, on the workspace volume mounted at ``workspace``."""
    from recflow.kubernetes import current_namespace, custom_objects_api
    from recflow.kubernetes.inferenceservice import InferenceService, storage_uri
    from recflow.kubernetes.pipeline import workspace_path

    isvc = InferenceService(cluster.inference_service, cluster.namespace or current_namespace(), custom_objects_api())
    uri = storage_uri(isvc.get()["spec"]["predictor"])
    bundle = workspace_path(uri, workspace)
    if not (bundle / "model_card.json").is_file():
        raise FileNotFoundError(f"InferenceService {cluster.inference_service} serves {uri}, but {bundle} holds no "
                                "model bundle: is the workspace volume mounted there?")  # fmt: skip
    return bundle


def _retrain_on_cluster(
    workspace: Path, config: RetrainConfig, reason: str, dataset: Path, folded: int, parameters: dict[str, Any]
) -> RetrainResult:
    """Run the pipeline on Kubeflow Pipelines and wait; roll the model its export registers out on the InferenceService."""
    import kfp

    from recflow.kubernetes.pipeline import workspace_uri
    from recflow.kubernetes.rollout import rollout_with_report
    from recflow.kubernetes.submit import submit
    from recflow.pipeline.parameters import PipelineParameters
    from recflow.pipeline.registry import ModelRegistry
    from recflow.platform.state import platform_directory

    registry = ModelRegistry(workspace / "models")
    before = registry.current()
    client = kfp.Client(host=config.host)
    # The run's workspace is this one: the tasks mount the same volume where the data was folded.
    submitted = submit(config.host, PipelineParameters.model_validate(parameters), workspace=str(workspace), client=client)
    log.info("pipeline run %s submitted", submitted.url)
    run = client.wait_for_run_completion(submitted.run_id, timeout=round(config.run_timeout_minutes * 60))
    if run.state != "SUCCEEDED":
        raise RuntimeError(f"pipeline run {submitted.url} ended {run.state}: no model to roll out")
    current = registry.current()
    if current is None or (before is not None and current["version"] == before["version"]):
        log.info("pipeline run %s blessed no model", submitted.url)
        return RetrainResult(reason, dataset, folded, False, None, None, None, submitted.url)
    bundle = Path(current["path"])
    result, report = rollout_with_report(
        platform_directory(workspace), workspace_uri(bundle, workspace), config.cluster, config.rollout, workspace=workspace
    )
    return RetrainResult(reason, dataset, folded, True, bundle, result, report, submitted.url)


def watch(
    workspace: str | Path,
    config: RetrainConfig,
    stop: threading.Event,
    max_retrainings: int | None = None,
    clock=time.monotonic,
    keep_going: bool = False,
) -> list[RetrainResult]:
    """Retrain whenever the trigger fires, until ``stop`` is set or ``max_retrainings`` are done; the retrainings.

    ``keep_going`` (``recflow retrain --watch``, the chart's retraining pod): a trigger read or a
    retraining that fails is logged and the watch goes on, a failed retraining counting for the
    cooldown like a finished one, so a run that fails every time is not started again at every
    poll; otherwise the failure is raised.

    The cooldown and the schedule count from the last retraining of the workspace, this process's
    or an earlier one's (its dataset's name says when it started): a restarted watcher does not
    retrain at once on a verdict that still stands.
    """
    from recflow.platform.state import PlatformState
    from recflow.rollout.prometheus import Prometheus

    done: list[RetrainResult] = []
    age = _last_retraining_age(Path(workspace))
    last_retrain: float | None = None if age is None else clock() - age
    last = clock() if last_retrain is None else last_retrain
    while not stop.is_set():
        if config.cluster is not None:
            prometheus_url = config.cluster.prometheus_url
        else:
            state = PlatformState.read(workspace)
            if state is None:
                raise RuntimeError(f"no platform running in {workspace}: run `recflow up` first")
            prometheus_url = state.prometheus_url
        try:
            reason = trigger_reason(Prometheus(prometheus_url), config, clock() - last)
        except Exception as error:
            if not keep_going:
                raise
            log.warning("reading the drift verdict from %s failed, trying again: %s", prometheus_url, error)
            reason = None
        cooling = last_retrain is not None and clock() - last_retrain < config.cooldown_minutes * 60
        if reason is not None and not cooling:
            try:
                result = retrain(workspace, config, reason)
            except Exception:
                if not keep_going:
                    raise
                log.exception("retraining (%s) failed; the next may start after the cooldown", reason)
            else:
                log.info("%s", result.summary())
                done.append(result)
            last = last_retrain = clock()
            if max_retrainings is not None and len(done) >= max_retrainings:
                break
        stop.wait(config.poll_seconds)
    return done


def _last_retraining_age(workspace: Path) -> float | None:
    """Seconds since the workspace's newest retraining started (None: it has had none)."""
    started = []
    for path in (workspace / DATASETS_DIR).glob(f"{RETRAIN_PREFIX}*"):
        try:
            started.append(dt.datetime.strptime(path.name.removeprefix(RETRAIN_PREFIX), RETRAIN_TIME))
        except ValueError:  # not a retraining's name
            continue
    if not started:
        return None
    newest = max(started).replace(tzinfo=dt.timezone.utc)
    return max((dt.datetime.now(dt.timezone.utc) - newest).total_seconds(), 0.0)


def trigger_reason(prometheus, config: RetrainConfig, since_last_seconds: float) -> str | None:
    """Why to retrain now ("drift", "schedule"), or None."""
    if config.on_drift:
        verdict = prometheus.query(DRIFT_QUERY)
        if verdict and float(verdict[0]["value"][1]) >= 1:
            return "drift"
    if config.every_hours is not None and since_last_seconds >= config.every_hours * 3600:
        return "schedule"
    return None
