"""The Helm chart, linted and rendered by Helm v4 (helm-python-sdk): scenarios, schema, wiring.

    .venv/bin/pytest tests/kubernetes -q
"""

from __future__ import annotations

import json
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from recflow.images import images
from serving.config import ServingConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "recflow"

POD_KINDS = {"Deployment", "StatefulSet", "Job"}


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """Every pod spec the chart defines, including those inside custom resources."""
    specs = []
    for o in objects:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in POD_KINDS:
            specs.append((name, o["spec"]["template"]["spec"]))
        elif o["kind"] == "InferenceService":
            specs.append((name, o["spec"]["predictor"]))
            specs += [(f"{name} canary", c["predictor"]) for c in o["spec"].get("canary", [])]
        elif o["kind"] == "ClusterTrainingRuntime":
            for job in o["spec"]["template"]["spec"]["replicatedJobs"]:
                specs.append((f"{name} {job['name']}", job["template"]["spec"]["template"]["spec"]))
    return specs


def test_scenarios_exist():
    names = {path.name for path in CHART.glob("ci/*-values.yaml")}
    assert {"default-values.yaml", "canary-values.yaml", "standard-mode-values.yaml",
            "monitoring-off-values.yaml"} <= names


def test_helm_lint_strict_passes(scenario, kube_version):
    report = helm.lint(CHART, yaml.safe_load(scenario.read_text()), strict=True, kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert not problems and not report["errors"], problems or report["errors"]


def test_every_scenario_renders_the_core_objects(rendered):
    for scenario, out in rendered.items():
        kinds = {o["kind"] for o in out.objects}
        assert {"InferenceService", "ConfigMap", "ServiceAccount", "Deployment", "Service", "Job",
                "ClusterTrainingRuntime", "Role", "RoleBinding"} <= kinds, scenario
        assert "helm upgrade" in out.notes and "kubectl" in out.notes, scenario


def test_default_scenario_has_monitoring_network_policies_and_budgets(rendered):
    out = rendered["default-values.yaml"]
    kinds = {o["kind"] for o in out.objects}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "NetworkPolicy", "PodDisruptionBudget",
            "StatefulSet"} <= kinds
    off = {o["kind"] for o in rendered["monitoring-off-values.yaml"].objects}
    assert not off & {"PodMonitor", "ServiceMonitor", "PrometheusRule", "PodDisruptionBudget"}
    assert "NetworkPolicy" in off
    assert not [o for o in rendered["monitoring-off-values.yaml"].of_kind("ConfigMap")
                if "grafana_dashboard" in o["metadata"]["labels"]]


# --- values.schema.json ---------------------------------------------------------------------------


def test_schema_forbids_unknown_keys_at_every_level():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node, where):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
            for key, child in node["properties"].items():
                walk(child, f"{where}.{key}")
        for child in node.get("anyOf", []):
            walk(child, where)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(schema, "values")
    # and every key of values.yaml is described by it
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"canary": {"trafficPercent": "ten"}}, "/canary/trafficPercent"),  # a string where an integer goes
        ({"canary": {"trafficPercent": 150}}, "/canary/trafficPercent"),
        ({"inferenceService": {"minReplicas": "1"}}, "/inferenceService/minReplicas"),
        ({"inferenceServise": {"name": "typo"}}, "inferenceServise"),  # an unknown top-level key
        ({"redis": {"enabeld": False}}, "enabeld"),  # an unknown nested key
        ({"inferenceService": {"servingConfig": {"max_kk": 5}}}, "max_kk"),
        ({"inferenceService": {"servingConfig": {"batch_gather_share": 2}}}, "batch_gather_share"),
        ({"inferenceService": {"servingConfig": {"inject_fault": {"kind": "slow"}}}}, "kind"),
        ({"inferenceService": {"deploymentMode": "RawDeploymentX"}}, "deploymentMode"),
        ({"inferenceService": {"resources": {"requests": {"cpu": 0.5}}}}, "cpu"),  # fractional quantity
    ],
)
def test_schema_rejects_broken_values(values, message):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match=message):
            chart.validate_schema(values)
        # rendering (what `helm install` does) refuses them too
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name="recflow", namespace="kubeflow")


def test_external_stores_need_their_secrets(render_chart):
    with pytest.raises(helm.HelmError, match="featureStore.registry.existingSecret is required"):
        render_chart({"postgres": {"enabled": False}})
    with pytest.raises(helm.HelmError, match="featureStore.onlineStore.existingSecret is required"):
        render_chart({"redis": {"enabled": False}})


# --- the InferenceService and its canary ---------------------------------------------------------


def kserve_container(predictor: dict) -> dict:
    (container,) = [c for c in predictor["containers"] if c["name"] == "kserve-container"]
    return container


def storage_uri(predictor: dict) -> str:
    (value,) = [e["value"] for e in kserve_container(predictor)["env"] if e["name"] == "STORAGE_URI"]
    return value


def test_knative_canary_moves_the_predictor_and_sets_canary_traffic_percent(rendered):
    isvc = rendered["canary-values.yaml"].one("InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 25
    assert storage_uri(predictor) == "pvc://recflow-workspace/models/candidate"
    assert predictor["labels"]["recflow.io/variant"] == "canary"
    assert "canary" not in isvc["spec"]

    stable = rendered["default-values.yaml"].one("InferenceService")
    assert "canaryTrafficPercent" not in stable["spec"]["predictor"]
    assert storage_uri(stable["spec"]["predictor"]) == "pvc://recflow-workspace/models/stable"
    assert stable["spec"]["predictor"]["labels"]["recflow.io/variant"] == "stable"


def test_standard_mode_canary_is_a_second_predictor(rendered):
    isvc = rendered["standard-canary-values.yaml"].one("InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    stable = isvc["spec"]["predictor"]
    # canaryTrafficPercent is ignored in Standard mode: it must not be there to mislead.
    assert "canaryTrafficPercent" not in stable
    assert storage_uri(stable) == "s3://recflow/models/stable"
    (canary,) = isvc["spec"]["canary"]
    assert canary["trafficPercent"] == 10
    assert storage_uri(canary["predictor"]) == "s3://recflow/models/candidate"
    # KServe's webhook: canary names required and distinct; no autoscaling bounds on a canary.
    assert canary["predictor"]["name"] != stable["name"]
    assert "maxReplicas" not in canary["predictor"]
    assert canary["predictor"]["minReplicas"] <= stable["minReplicas"]
    assert canary["predictor"]["labels"]["recflow.io/variant"] == "canary"

    plain = rendered["standard-mode-values.yaml"].one("InferenceService")
    assert "canary" not in plain["spec"]


def test_model_server_answers_as_the_variant_the_cluster_rollout_measures(rendered):
    """The server names itself in X-Recflow-Variant: in Standard mode from its pod's name (the Downward
    API), which must give the Deployment name the rollout selects feedback by; in Knative mode from
    K_REVISION, which Knative sets, so no fieldRef (Knative refuses one unless enabled)."""
    from recflow.kubernetes.inferenceservice import predictor_deployment
    from serving.model import POD_NAME_ENV, served_variant

    isvc = rendered["standard-mode-values.yaml"].one("InferenceService")
    (pod_name,) = [e for e in kserve_container(isvc["spec"]["predictor"])["env"] if e["name"] == POD_NAME_ENV]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    deployment = predictor_deployment(isvc["metadata"]["name"], isvc["spec"]["predictor"].get("name"))
    assert served_variant({POD_NAME_ENV: f"{deployment}-6d4f8b9c7-q2x5z"}) == deployment
    knative = kserve_container(rendered["default-values.yaml"].one("InferenceService")["spec"]["predictor"])
    assert POD_NAME_ENV not in {e["name"] for e in knative["env"]}


def test_model_server_runs_the_serving_image_with_the_bundle_and_feature_store(rendered):
    container = kserve_container(rendered["default-values.yaml"].one("InferenceService")["spec"]["predictor"])
    assert container["image"] == images()["serving"]
    assert container["args"][:2] == ["--bundle", "/mnt/models"]
    env = {e["name"] for e in container["env"]}
    assert {"STORAGE_URI", "FEAST_REGISTRY_URL", "REDIS_CONNECTION_STRING"} <= env
    external = kserve_container(rendered["external-stores-values.yaml"].one("InferenceService")["spec"]["predictor"])
    assert external["image"] == "registry.example.com/recflow/serving:0.1.0"
    by_name = {e["name"]: e for e in external["env"]}
    assert by_name["REDIS_CONNECTION_STRING"]["valueFrom"]["secretKeyRef"]["name"] == "feast-online-store"


def test_serving_config_values_are_server_settings(rendered):
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = schema["properties"]["inferenceService"]["properties"]["servingConfig"]["properties"]
    assert set(keys) == set(ServingConfig.model_fields), set(keys) ^ set(ServingConfig.model_fields)
    configmap = rendered["external-stores-values.yaml"].one("ConfigMap", "-serving")
    config = ServingConfig.model_validate(yaml.safe_load(configmap["data"]["serving.yaml"]))
    assert config.feature_deadline_ms == 50 and config.max_k == 50
    assert config.search_threads == 1 and config.batch_gather_share == 0.4
    default = rendered["default-values.yaml"].one("ConfigMap", "-serving")
    assert ServingConfig.model_validate(yaml.safe_load(default["data"]["serving.yaml"])) == ServingConfig()


# --- files shared with the rest of the project ------------------------------------------------------


def test_chart_files_are_links_to_the_project_sources():
    """One file each, not copies: the chart reads them through symlinks Helm follows."""
    links = {
        "images.yaml": ROOT / "recflow" / "images.yaml",
        "recflow-alerts.yml": ROOT / "recflow" / "monitoring" / "rules" / "recflow-alerts.yml",
        "feature_store.yaml": ROOT / "feature_repo" / "feature_store.cluster.yaml",
    }
    for name, source in links.items():
        path = CHART / "files" / name
        assert path.is_symlink(), f"{path} must be a symlink to {source}"
        assert path.resolve() == source.resolve()


def test_prometheus_rule_groups_are_the_rule_file(rendered):
    rule = rendered["default-values.yaml"].one("PrometheusRule")
    source = yaml.safe_load((ROOT / "recflow" / "monitoring" / "rules" / "recflow-alerts.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


def test_feature_store_config_is_the_cluster_variant(rendered):
    configmap = rendered["default-values.yaml"].one("ConfigMap", "-feast")
    source = (ROOT / "feature_repo" / "feature_store.cluster.yaml").read_text()
    assert yaml.safe_load(configmap["data"]["feature_store.yaml"]) == yaml.safe_load(source)


def test_dashboard_has_the_panels_and_reads_recflow_metrics(rendered):
    (configmap,) = [c for c in rendered["default-values.yaml"].of_kind("ConfigMap")
                    if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    dashboard = json.loads(configmap["data"]["recflow.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ("recflow_stage_seconds_bucket", "recflow_fallback_total", "recflow_feedback_clicks_total",
                   "recflow_feedback_impressions_total", "recflow_drift_score", "recflow_drift_detected"):
        assert metric in exprs, metric


def test_pod_monitor_names_variants_as_jobs(rendered):
    """The canary analysis compares job="stable" with job="canary" (recflow/rollout/prometheus.py)."""
    monitor = rendered["default-values.yaml"].one("PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_recflow_io_variant"], "targetLabel": "job"} in endpoint["relabelings"]
    assert monitor["spec"]["podTargetLabels"] == ["serving.knative.dev/revision"]  # the cluster backend's selector
    isvc = rendered["default-values.yaml"].one("InferenceService")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= isvc["spec"]["predictor"]["labels"].items()


# --- security, resources, RBAC ----------------------------------------------------------------------


def test_every_pod_is_hardened_and_bounded(rendered):
    for scenario, out in rendered.items():
        specs = pod_specs(out.objects)
        assert len(specs) >= 4, scenario  # feast apply, feature server, predictor, trainer node (+ stores)
        for name, spec in specs:
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", name
            for container in spec["containers"] + spec.get("initContainers", []):
                sc = container["securityContext"]
                where = f"{scenario}: {name} {container['name']}"
                assert sc["runAsNonRoot"] is True, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
                assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where


def test_pipeline_rbac_is_namespaced_and_minimal(rendered):
    out = rendered["default-values.yaml"]
    assert not out.of_kind("ClusterRole") and not out.of_kind("ClusterRoleBinding")
    role = out.one("Role", "-pipeline")
    verbs = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
             for group in rule["apiGroups"] for resource in rule["resources"]}
    assert verbs[("trainer.kubeflow.org", "trainjobs")] >= {"create", "watch", "delete"}
    # The pipeline ends at a registered bundle: rolling it out is the retraining trigger's, under its own Role.
    assert {group for group, _ in verbs} == {"trainer.kubeflow.org", ""}
    assert all("*" not in v for v in verbs.values()) and verbs[("", "pods")] == {"get", "list", "watch"}
    binding = out.one("RoleBinding", "-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]


def test_training_runtime_runs_the_pipeline_image(rendered):
    runtime = rendered["default-values.yaml"].one("ClusterTrainingRuntime")
    assert runtime["metadata"]["name"] == "recflow-torch"
    assert "torch" in runtime["spec"]["mlPolicy"]
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    (container,) = job["template"]["spec"]["template"]["spec"]["containers"]
    # The Trainer's torch plugin finds the trainer container by these names.
    assert job["name"] == "node" and container["name"] == "node"
    assert job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert container["image"] == images()["pipeline"]


def test_network_policies_select_the_pods_they_guard(rendered):
    out = rendered["default-values.yaml"]
    pod_labels = [spec.get("labels") or {} for _, spec in pod_specs(out.objects)]
    pod_labels += [o["spec"]["template"]["metadata"]["labels"] for o in out.objects if o["kind"] in POD_KINDS]
    for policy in out.of_kind("NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), policy["metadata"]["name"]


def test_chart_provides_what_the_compiled_pipeline_expects(rendered):
    """The names and keys recflow/kubernetes/pipeline.py compiles into the pipeline exist here."""
    from recflow.kubernetes.pipeline import SECRETS, TRAINING_CONFIG_MAP
    from recflow.kubernetes.trainjob import TrainJobConfig

    out = rendered["default-values.yaml"]
    secret = out.one("Secret", "recflow-feature-store")
    assert set(secret["stringData"]) == set(SECRETS["recflow-feature-store"])
    # the same registry and Redis as the model server
    assert secret["stringData"]["FEAST_REGISTRY_URL"] == out.one("Secret", "-postgres")["stringData"]["url"]
    configmap = out.one("ConfigMap", TRAINING_CONFIG_MAP)
    config = TrainJobConfig.model_validate(yaml.safe_load(configmap["data"]["trainjob"]))
    assert config.image == images()["pipeline"]
    assert config.runtime == out.one("ClusterTrainingRuntime")["metadata"]["name"]
    claim = out.one("PersistentVolumeClaim")
    assert config.workspace.claim_name == claim["metadata"]["name"]
    # with external stores the user makes that Secret (the chart cannot know their credentials)
    assert not rendered["external-stores-values.yaml"].of_kind("Secret")


# --- the feedback loop: feedback service and drift monitor ------------------------------------------


def loop_container(out, component: str) -> tuple[dict, dict, dict]:
    """(Deployment, its pod spec, its one container) of the feedback service or the drift monitor."""
    deployment = out.one("Deployment", f"-{component}")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return deployment, spec, container


def mounted(spec: dict, container: dict, path: str) -> tuple[dict, dict]:
    """(volumeMount, volume) of the volume mounted at `path`."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_feedback_service_and_drift_monitor_share_the_workspace_log(rendered):
    from recflow.feedback import service as feedback
    from recflow.monitoring import service as monitoring

    out = rendered["default-values.yaml"]
    claim = out.one("PersistentVolumeClaim")["metadata"]["name"]
    args, mounts = {}, {}
    for component, module in (("feedback", feedback), ("drift-monitor", monitoring)):
        deployment, spec, container = loop_container(out, component)
        assert container["image"] == images()["pipeline"]
        assert container["command"] == ["python", "-m", module.__name__.removesuffix(".service")]
        # the service's own command line accepts the Deployment's arguments
        args[component] = module.build_parser().parse_args(container["args"])
        assert args[component].host == "0.0.0.0"
        assert args[component].port == container["ports"][0]["containerPort"]
        mounts[component], volume = mounted(spec, container, args[component].workspace)
        assert volume["persistentVolumeClaim"]["claimName"] == claim
        service = out.one("Service", f"-{component}")
        assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    # the monitor reads the log where the service writes it (both take the workspace's default)
    assert args["feedback"].workspace == args["drift-monitor"].workspace
    assert args["feedback"].log is None and args["drift-monitor"].log is None
    # one writer per log (it is locked): one feedback pod, never two during an update
    assert mounts["feedback"]["readOnly"] is False and mounts["drift-monitor"]["readOnly"] is True
    deployment = out.one("Deployment", "-feedback")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_feedback_service_opens_the_feature_store_the_model_server_reads(rendered):
    from recflow.feedback import service as feedback

    out = rendered["default-values.yaml"]
    deployment, spec, container = loop_container(out, "feedback")
    args = feedback.build_parser().parse_args(container["args"])
    _, volume = mounted(spec, container, args.feature_repo)
    assert volume["configMap"]["name"] == out.one("ConfigMap", "-feast")["metadata"]["name"]
    server = kserve_container(out.one("InferenceService")["spec"]["predictor"])
    assert container["env"] == [e for e in server["env"] if e["name"] != "STORAGE_URI"]
    # let through the NetworkPolicy around Redis and Postgres
    assert deployment["spec"]["template"]["metadata"]["labels"]["recflow.io/feature-store-client"] == "true"


def test_drift_monitor_settings_and_scrape_job(rendered, render_chart):
    from recflow.monitoring import service as monitoring
    from recflow.monitoring.live import MonitorConfig
    from recflow.pipeline.retrain import DRIFT_QUERY

    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = schema["properties"]["driftMonitor"]["properties"]["config"]["properties"]
    assert set(keys) <= set(MonitorConfig.model_fields), set(keys) - set(MonitorConfig.model_fields)

    def settings(out) -> MonitorConfig:
        _, spec, container = loop_container(out, "drift-monitor")
        path = Path(monitoring.build_parser().parse_args(container["args"]).config)
        _, volume = mounted(spec, container, str(path.parent))
        configmap = out.one("ConfigMap", "-drift-monitor")
        assert volume["configMap"]["name"] == configmap["metadata"]["name"]
        return MonitorConfig.model_validate(yaml.safe_load(configmap["data"][path.name]))

    assert settings(rendered["default-values.yaml"]) == MonitorConfig()
    tuned = settings(render_chart({"driftMonitor": {"config": {"min_clicks": 50, "interval_seconds": 2}}}))
    assert (tuned.min_clicks, tuned.interval_seconds) == (50, 2)

    # scraped under the job the retraining trigger and the alerting rules read
    out = rendered["default-values.yaml"]
    assert 'job="monitor"' in DRIFT_QUERY
    jobs = {}
    for component in ("feedback", "drift-monitor"):
        service_monitor = out.one("ServiceMonitor", f"-{component}")
        (endpoint,) = service_monitor["spec"]["endpoints"]
        assert endpoint["port"] == out.one("Service", f"-{component}")["spec"]["ports"][0]["name"]
        (relabel,) = endpoint["relabelings"]
        jobs[component] = relabel["replacement"] if relabel["targetLabel"] == "job" else None
        labels = out.one("Deployment", f"-{component}")["spec"]["template"]["metadata"]["labels"]
        assert service_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert jobs == {"feedback": "feedback", "drift-monitor": "monitor"}


def test_drift_monitor_may_read_its_inference_service_and_nothing_else(rendered):
    """On a cluster it follows the variant the InferenceService rolled out (recflow/monitoring/service.py)."""
    from recflow.monitoring import service as monitoring

    out = rendered["default-values.yaml"]
    _, spec, container = loop_container(out, "drift-monitor")
    isvc = out.one("InferenceService")["metadata"]["name"]
    assert monitoring.build_parser().parse_args(container["args"]).inference_service == isvc
    assert spec["automountServiceAccountToken"] is True
    binding = out.one("RoleBinding", "-drift-monitor")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": spec["serviceAccountName"], "namespace": "kubeflow"}]
    (rule,) = out.one("Role", binding["roleRef"]["name"])["rules"]
    assert rule == {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "resourceNames": [isvc],
                    "verbs": ["get"]}  # fmt: skip
    assert loop_container(out, "feedback")[1]["automountServiceAccountToken"] is False


def test_the_loops_services_need_the_feedback_service(render_chart):
    with pytest.raises(helm.HelmError, match="driftMonitor.enabled needs feedback.enabled"):
        render_chart({"feedback": {"enabled": False}, "retrain": {"enabled": False}})
    with pytest.raises(helm.HelmError, match="retrain.enabled needs feedback.enabled"):
        render_chart({"feedback": {"enabled": False}, "driftMonitor": {"enabled": False}})
    out = render_chart({"feedback": {"enabled": False}, "driftMonitor": {"enabled": False}, "retrain": {"enabled": False}})
    assert not [o for o in out.objects if o["metadata"]["name"].endswith(("-feedback", "-drift-monitor", "-retrain"))]


def test_retraining_pod_watches_with_the_release_settings_and_may_patch_only_its_inference_service(rendered, render_chart):
    from recflow.cli import build_parser
    from recflow.pipeline.retrain import RetrainConfig

    out = rendered["default-values.yaml"]
    deployment, spec, container = loop_container(out, "retrain")
    assert container["image"] == images()["pipeline"] and container["command"] == ["recflow", "retrain"]
    args = build_parser().parse_args(["retrain", *container["args"]])
    assert args.watch
    # the workspace volume, written (the folded data, the rollout records) at the path the pipeline's tasks use
    mount, volume = mounted(spec, container, args.workspace)
    assert volume["persistentVolumeClaim"]["claimName"] == out.one("PersistentVolumeClaim")["metadata"]["name"]
    assert args.workspace == "/recflow/workspace" and not mount.get("readOnly")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}

    def settings(out) -> RetrainConfig:
        _, spec, container = loop_container(out, "retrain")
        path = Path(build_parser().parse_args(["retrain", *container["args"]]).config)
        _, volume = mounted(spec, container, str(path.parent))
        return RetrainConfig.model_validate(yaml.safe_load(out.one("ConfigMap", "-retrain")["data"][path.name]))

    config = settings(out)
    assert config.host == "http://ml-pipeline.kubeflow:8888"
    assert config.cluster.prometheus_url == "http://kube-prometheus-stack-prometheus.monitoring:9090"
    assert (config.cluster.inference_service, config.cluster.mode) == ("recommender", "serverless")
    assert settings(rendered["standard-mode-values.yaml"]).cluster.mode == "standard"
    tuned = settings(render_chart({"retrain": {"config": {"cooldown_minutes": 90, "parameters": {"epochs": 2}}}}))
    assert (tuned.cooldown_minutes, tuned.parameters) == (90, {"epochs": 2})
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = schema["properties"]["retrain"]["properties"]["config"]["properties"]
    assert set(keys) <= set(RetrainConfig.model_fields) - {"host", "cluster"}

    # its own identity, with a token, allowed to read and patch this release's InferenceService alone
    account = spec["serviceAccountName"]
    assert spec["automountServiceAccountToken"] is True and account != out.one("ServiceAccount", "recflow")["metadata"]["name"]
    binding = out.one("RoleBinding", "-retrain")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "kubeflow"}]
    (rule,) = out.one("Role", binding["roleRef"]["name"])["rules"]
    assert rule == {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                    "resourceNames": [out.one("InferenceService")["metadata"]["name"]], "verbs": ["get", "patch"]}  # fmt: skip
