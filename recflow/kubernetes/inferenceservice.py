"""Canary traffic on a KServe ``InferenceService``: the cluster's traffic backends for the rollout controller.

Both backends have the local backend's methods (``start_canary``,
``set_canary_percent``, ``promote``, ``roll_back``), so
:func:`recflow.rollout.controller.run_rollout` drives them unchanged. Each
change is a JSON merge patch (what ``CustomObjectsApi.patch_namespaced_custom_object``
sends) followed by a wait until the InferenceService's status shows it
(``observedGeneration`` caught up, ``Ready`` true, the traffic as asked); a
wait that runs out raises :class:`CanaryError` with the conditions that are
not true, and the caller rolls back.

:class:`ServerlessCanary`: KServe Serverless mode (Knative). The candidate is
a new revision of the same predictor: its bundle (``model.storageUri``, or the
``STORAGE_URI`` of its ``kserve-container`` when the predictor is a custom
container, as the chart deploys it) is set to the candidate together with
``canaryTrafficPercent``, and Knative splits the
traffic between ``latestRolledoutRevision`` (the stable) and the new one.
Promoting removes ``canaryTrafficPercent``, so the new revision takes all the
traffic and becomes the rolled-out one; rolling back sets the percent to 0
and the previous ``storageUri`` back, so the spec again names the model
that serves. Per-variant metrics are told apart by the revision: Knative
labels every pod ``serving.knative.dev/revision``; a PodMonitor with
``podTargetLabels: [serving.knative.dev/revision]`` makes it the series label
``serving_knative_dev_revision``, which the selectors match.

:class:`StandardCanary`: KServe Standard (RawDeployment) mode. There,
``canaryTrafficPercent`` is silently ignored; KServe 0.20 added ``spec.canary[]``:
each entry is a named predictor with its own Deployment
(``<isvc>-<name>-predictor``) and a ``trafficPercent``, split by the Gateway
API HTTPRoute KServe manages (so the Gateway API network layer is needed).
Promoting makes the canary's predictor (same name, so the same Deployment,
no restart) the stable one and empties ``spec.canary``; rolling back empties
it. Older KServe in Standard mode has no traffic split at all: the API server
rejects ``spec.canary`` as an unknown field, which surfaces as the error. Per-variant
metrics are told apart by pod name: a Deployment's pods are named
``<deployment>-<replicaset hash>-<suffix>``, and every PodMonitor target
carries ``pod`` and ``namespace``.

The feedback counters' ``variant`` label must name the same thing (the
revision, or the Deployment): the feedback path learns it from the server that
answered (Knative sets ``K_REVISION`` in every revision's container).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from recflow.rollout.prometheus import VariantSelector

log = logging.getLogger("recflow.rollout")

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
# KServe's name for a predictor's model container, and the variable its storage
# initializer downloads from when the predictor is a custom container.
MODEL_CONTAINER = "kserve-container"
STORAGE_URI_ENV = "STORAGE_URI"
# The Knative revision as a Prometheus label: podTargetLabels sanitises serving.knative.dev/revision to this.
REVISION_LABEL = "serving_knative_dev_revision"


class CanaryError(RuntimeError):
    """The InferenceService refused a change or did not reach the state asked for."""


class InferenceService:
    """One InferenceService: read it, patch it, wait for its status to show a change."""

    def __init__(
        self,
        name: str,
        namespace: str,
        api: Any,
        ready_timeout_seconds: float = 600.0,
        poll_seconds: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.api = api
        self.ready_timeout_seconds = ready_timeout_seconds
        self.poll_seconds = poll_seconds
        self.sleep = sleep
        self.clock = clock
        self._generation = 0

    def get(self) -> dict:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)

    def patch(self, body: dict) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            patched = self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name, body)
        except ApiException as error:
            raise CanaryError(f"InferenceService {self.namespace}/{self.name} refused {body}: {error.body or error.reason}") from error
        self._generation = patched["metadata"].get("generation", 0)

    def wait(self, what: str, reached: Callable[[dict], bool]) -> dict:
        """Poll until the status reflects the last patch, ``Ready`` is true and ``reached``; return the object."""
        deadline = self.clock() + self.ready_timeout_seconds
        while True:
            isvc = self.get()
            status = isvc.get("status", {})
            current = status.get("observedGeneration", 0) >= self._generation
            if current and condition_true(isvc, "Ready") and reached(isvc):
                log.info("InferenceService %s/%s: %s", self.namespace, self.name, what)
                return isvc
            if self.clock() >= deadline:
                raise CanaryError(f"InferenceService {self.namespace}/{self.name}: not {what} within "
                                  f"{self.ready_timeout_seconds:g} s: {not_ready(isvc)}")  # fmt: skip
            self.sleep(self.poll_seconds)


def condition_true(isvc: dict, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in isvc.get("status", {}).get("conditions", []))


def not_ready(isvc: dict) -> str:
    """The conditions that are not true, with their reasons, and the last model failure if any."""
    status = isvc.get("status", {})
    parts = [f"{c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}".rstrip(": ")
             for c in status.get("conditions", []) if c.get("status") != "True"]  # fmt: skip
    failure = status.get("modelStatus", {}).get("lastFailureInfo")
    if failure:
        parts.append(f"model {failure.get('reason', '')}: {failure.get('message', '')}")
    if status.get("observedGeneration", 0) < isvc["metadata"].get("generation", 0):
        parts.append("the controller has not seen the latest spec yet")
    return "; ".join(parts) or "no status yet"


def _serving(isvc: dict) -> dict:
    """``isvc`` if it is ready to take a canary: a rollout starts from a service that serves."""
    if not condition_true(isvc, "Ready"):
        raise CanaryError(f"InferenceService {isvc['metadata'].get('namespace')}/{isvc['metadata']['name']} "
                          f"is not ready, so no canary starts: {not_ready(isvc)}")  # fmt: skip
    return isvc


def storage_uri(predictor: dict) -> str:
    """The bundle a predictor serves: its ``model.storageUri``, or the ``STORAGE_URI`` of its
    ``kserve-container`` (a custom container, as the chart deploys the recommender)."""
    if "model" in predictor:
        return predictor["model"]["storageUri"]
    for container in predictor.get("containers", []):
        for variable in container.get("env", []) if container["name"] == MODEL_CONTAINER else []:
            if variable["name"] == STORAGE_URI_ENV:
                return variable["value"]
    raise CanaryError(f"the predictor names no bundle: neither model.storageUri nor {STORAGE_URI_ENV} in its {MODEL_CONTAINER}")


def serving(predictor: dict, uri: str) -> dict:
    """The fields of ``predictor`` that make it serve ``uri``, whole: a merge patch replaces a list entirely."""
    if "model" in predictor:
        return {"model": {**predictor["model"], "storageUri": uri}}
    return {"containers": [
        {**container, "env": [{**v, "value": uri} if v["name"] == STORAGE_URI_ENV else v for v in container.get("env", [])]}
        if container["name"] == MODEL_CONTAINER else container
        for container in predictor["containers"]
    ]}  # fmt: skip


class ServerlessCanary:
    """Knative revisions with ``spec.predictor.canaryTrafficPercent`` (KServe Serverless mode)."""

    def __init__(self, isvc: InferenceService) -> None:
        self.isvc = isvc
        self.stable_predictor: dict = {}
        self.stable_revision = ""
        self.canary_revision = ""
        self.started = False  # the InferenceService has been changed: a rollback is due

    def start_canary(self, candidate_uri: str) -> None:
        """The candidate as a new revision at 0 %; returns once that revision is ready."""
        current = _serving(self.isvc.get())
        mode = current.get("status", {}).get("deploymentMode", "Serverless")
        if mode != "Serverless":
            raise CanaryError(f"{self.isvc.name} runs in {mode} mode, which ignores canaryTrafficPercent; "
                              "use the standard backend (spec.canary, KServe >= 0.20)")  # fmt: skip
        self.stable_predictor = current["spec"]["predictor"]
        if candidate_uri == storage_uri(self.stable_predictor):
            raise CanaryError(f"{self.isvc.name} already serves {candidate_uri}")
        self.stable_revision = stable_variant(current)
        log.info("starting the canary %s beside revision %s", candidate_uri, self.stable_revision)
        self.isvc.patch({"spec": {"predictor": {"canaryTrafficPercent": 0, **serving(self.stable_predictor, candidate_uri)}}})
        self.started = True

        def new_revision_ready(isvc: dict) -> bool:
            status = isvc["status"]["components"]["predictor"]
            return status.get("latestReadyRevision") == status.get("latestCreatedRevision") != self.stable_revision

        ready = self.isvc.wait("canary revision ready", new_revision_ready)
        self.canary_revision = ready["status"]["components"]["predictor"]["latestReadyRevision"]

    def set_canary_percent(self, percent: int) -> None:
        self.isvc.patch({"spec": {"predictor": {"canaryTrafficPercent": percent}}})
        self.isvc.wait(f"canary at {percent}%", lambda isvc: _traffic(isvc, self.canary_revision) == percent)

    def promote(self) -> None:
        """Remove ``canaryTrafficPercent``: the canary revision takes all traffic and is the new stable."""
        self.isvc.patch({"spec": {"predictor": {"canaryTrafficPercent": None}}})

        def rolled_out(isvc: dict) -> bool:
            predictor = isvc["status"]["components"]["predictor"]
            return predictor.get("latestRolledoutRevision") == self.canary_revision and _traffic(isvc, self.canary_revision) == 100

        self.isvc.wait(f"canary revision {self.canary_revision} promoted", rolled_out)

    def roll_back(self) -> None:
        """All traffic to the stable revision; the spec names the stable model again."""
        stable_uri = storage_uri(self.stable_predictor)
        self.isvc.patch({"spec": {"predictor": {"canaryTrafficPercent": 0, **serving(self.stable_predictor, stable_uri)}}})
        self.isvc.wait(f"rolled back to revision {self.stable_revision}", lambda isvc: _traffic(isvc, self.stable_revision) == 100)

    def selectors(self) -> dict[str, VariantSelector]:
        """Each variant's series: its revision's pods, and feedback tagged with the revision."""
        return {variant: VariantSelector(server=f'namespace="{self.isvc.namespace}",{REVISION_LABEL}="{revision}"',
                                         feedback=f'variant="{revision}"')
                for variant, revision in (("stable", self.stable_revision), ("canary", self.canary_revision))}  # fmt: skip


def _traffic(isvc: dict, revision: str) -> int:
    """The percent of traffic ``revision`` gets (Knative omits a zero percent)."""
    targets = isvc.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])
    return sum(target.get("percent", 0) for target in targets if target.get("revisionName") == revision)


class StandardCanary:
    """A named canary predictor in ``spec.canary[]`` with its own Deployment (KServe >= 0.20 Standard mode)."""

    def __init__(self, isvc: InferenceService) -> None:
        self.isvc = isvc
        self.stable_name: str | None = None
        self.canary: dict = {}
        self.started = False  # the InferenceService has been changed: a rollback is due

    @property
    def canary_name(self) -> str:
        return self.canary["name"]

    def start_canary(self, candidate_uri: str) -> None:
        """The candidate as a canary predictor at 0 %; returns once its Deployment is ready."""
        current = _serving(self.isvc.get())
        mode = current.get("status", {}).get("deploymentMode", "")
        if mode == "Serverless":
            raise CanaryError(f"{self.isvc.name} runs in Serverless mode: use the serverless backend (canaryTrafficPercent)")
        predictor = current["spec"]["predictor"]
        if candidate_uri == storage_uri(predictor):
            raise CanaryError(f"{self.isvc.name} already serves {candidate_uri}")
        self.stable_name = predictor.get("name")
        # The name is the Deployment's; derived from the candidate, so a later candidate gets another.
        name = "c" + hashlib.sha256(candidate_uri.encode()).hexdigest()[:8]
        # Only what is served differs: KServe fills the rest of the canary predictor from the stable one.
        fields = serving(predictor, candidate_uri)
        if "model" in fields:  # the CRD requires a canary model's container name: KServe's own
            fields["model"] = {"name": MODEL_CONTAINER, **fields["model"]}
        self.canary = {"name": name, **fields}
        log.info("starting the canary %s as predictor %s", candidate_uri, name)
        self.set_canary_percent(0)

    def set_canary_percent(self, percent: int) -> None:
        # A merge patch replaces a list whole: the entry is sent complete every time.
        self.isvc.patch({"spec": {"canary": [{"trafficPercent": percent, "predictor": self.canary}]}})
        self.started = True

        def reached(isvc: dict) -> bool:
            status = next((s for s in isvc["status"].get("canaryStatuses", []) if s["name"] == self.canary_name), None)
            return status is not None and status["ready"] and status["trafficPercent"] == percent

        self.isvc.wait(f"canary {self.canary_name} ready at {percent}%", reached)

    def promote(self) -> None:
        """The canary's predictor (its Deployment, untouched) becomes the stable one; no canary is left."""
        self.isvc.patch({"spec": {"predictor": self.canary, "canary": []}})
        self.isvc.wait(f"canary {self.canary_name} promoted", lambda isvc: not isvc["status"].get("canaryStatuses"))

    def roll_back(self) -> None:
        """Remove the canary: KServe deletes its Deployment and routes everything to the stable one."""
        self.isvc.patch({"spec": {"canary": []}})
        self.isvc.wait(f"canary {self.canary_name} removed", lambda isvc: not isvc["status"].get("canaryStatuses"))

    def selectors(self) -> dict[str, VariantSelector]:
        """Each variant's series: its Deployment's pods, and feedback tagged with the Deployment's name."""
        return {variant: VariantSelector(server=f'namespace="{self.isvc.namespace}",pod=~"{deployment}-[a-z0-9]+-[a-z0-9]+"',
                                         feedback=f'variant="{deployment}"')
                for variant, deployment in (("stable", self.deployment(self.stable_name)),
                                            ("canary", self.deployment(self.canary_name)))}  # fmt: skip

    def deployment(self, predictor_name: str | None) -> str:
        return predictor_deployment(self.isvc.name, predictor_name)


def predictor_deployment(isvc_name: str, predictor_name: str | None) -> str:
    """KServe's Deployment of a predictor (Standard mode): ``<isvc>-predictor``, or ``<isvc>-<name>-predictor`` when named."""
    return f"{isvc_name}-{predictor_name}-predictor" if predictor_name else f"{isvc_name}-predictor"


def stable_variant(isvc: dict) -> str:
    """The variant the stable model answers as, the name feedback carries on a cluster: in Serverless
    mode its Knative revision (the rolled-out one), else the stable predictor's Deployment. The drift
    monitor follows that variant's feedback; "" while there is none yet."""
    status = isvc.get("status", {})
    if status.get("deploymentMode", "Serverless") == "Serverless":
        predictor = status.get("components", {}).get("predictor", {})
        return predictor.get("latestRolledoutRevision") or predictor.get("latestReadyRevision", "")
    return predictor_deployment(isvc["metadata"]["name"], isvc["spec"]["predictor"].get("name"))
