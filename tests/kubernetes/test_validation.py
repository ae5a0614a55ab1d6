"""Every rendered object and every manifest in manifests/ against the API's own schemas.

Built-in kinds: kubernetes-validate in strict mode (unknown fields are errors, as
`kubectl apply --validate=strict`), for the Kubernetes version kind-config.yaml
runs and for the newest one kubernetes-validate knows (a removed API fails there).
Custom resources: the CRD schemas in ../shared/schemas (KServe v0.20.0, Trainer
v2.3.0, Prometheus Operator v0.93.0). An object neither can check is a failure,
not a skip.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
# Helm values for upstream charts, not Kubernetes objects: parsed, not validated here.
HELM_VALUES = MANIFESTS / "values"


def without_nulls(value):
    """The API server drops null fields before validating; jsonschema would reject them."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def problems_of(obj: dict, crd_schemas: dict, versions: list[str]) -> list[str]:
    name = f"{obj['kind']}/{obj['metadata'].get('name')}"
    key = (obj["apiVersion"], obj["kind"])
    if key in crd_schemas:
        errors = crd_schemas[key].iter_errors(without_nulls(obj))
        return [f"{name}: {e.json_path}: {e.message}" for e in errors]
    found = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            found.append(f"{name}: no schema for {key} in Kubernetes {version} nor in ../shared/schemas")
        except kubernetes_validate.ValidationError as error:
            found.append(f"{name} (Kubernetes {version}): {error.message} at {list(error.path)}")
    return found


@pytest.fixture(scope="session")
def versions(kube_version) -> list[str]:
    return sorted({kube_version, kubernetes_validate.latest_version()})


def test_rendered_objects_are_valid(rendered, crd_schemas, versions):
    problems = []
    for scenario, out in rendered.items():
        problems += [f"{scenario}: {p}" for obj in out.objects for p in problems_of(obj, crd_schemas, versions)]
    assert not problems, "\n".join(problems)


def test_custom_resources_were_checked_against_crd_schemas(rendered, crd_schemas):
    """The CRD path above is taken for every custom kind the chart renders."""
    kinds = {(o["apiVersion"], o["kind"]) for out in rendered.values() for o in out.objects}
    custom = {k for k in kinds if "." in k[0].split("/")[0]} - {
        ("networking.k8s.io/v1", "NetworkPolicy"), ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    }
    assert custom == {
        ("serving.kserve.io/v1beta1", "InferenceService"),
        ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    }
    assert custom <= set(crd_schemas)


def test_a_broken_custom_resource_is_caught(rendered, crd_schemas, versions):
    """The validators are not vacuous: a misspelt field in an InferenceService fails."""
    isvc = rendered["default-values.yaml"].one("InferenceService")
    broken = {**isvc, "spec": {**isvc["spec"], "predictr": isvc["spec"]["predictor"]}}
    assert any("predictr" in p for p in problems_of(broken, crd_schemas, versions))
    service = rendered["default-values.yaml"].of_kind("Service")[0]
    broken = {**service, "spec": {**service["spec"], "prots": []}}
    assert any("prots" in p for p in problems_of(broken, crd_schemas, versions))


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if HELM_VALUES not in p.parents)


def test_manifests_are_valid(crd_schemas, versions):
    files = manifest_files()
    assert len(files) >= 5, files
    problems = []
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, f"{path} holds no object"
        for obj in docs:
            problems += [f"{path.relative_to(ROOT)}: {p}" for p in problems_of(obj, crd_schemas, versions)]
    assert not problems, "\n".join(problems)


def test_helm_values_for_upstream_charts_parse():
    for path in HELM_VALUES.glob("*.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
