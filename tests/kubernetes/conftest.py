"""Rendering fixtures for the offline verification of the chart and the kind manifests.

The chart is rendered by Helm itself: ``helm-python-sdk`` binds Helm v4's Go SDK
(``libhelm_c``) through ctypes, so no helm binary is needed. Each scenario in
``helm/recflow/ci/*-values.yaml`` is rendered once per session.

Custom resources are checked against the CRD JSON schemas in ``../shared/schemas``
(KServe, Kubeflow Trainer, Prometheus Operator, Knative); tests that need them
skip with the reason when that folder is absent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import helm_python as helm
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "recflow"
SCENARIOS = sorted(CHART.glob("ci/*-values.yaml"))
MANIFESTS = ROOT / "manifests"
SHARED_SCHEMAS = ROOT.parent / "shared" / "schemas"
RELEASE, NAMESPACE = "recflow", "kubeflow"


def kind_kubernetes_version() -> str:
    """The Kubernetes version kind-config.yaml's node image runs (``kindest/node:v1.33.1`` -> ``1.33.0``)."""
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    images = {node["image"] for node in config["nodes"]}
    assert len(images) == 1, f"kind-config.yaml mixes node images: {images}"
    match = re.fullmatch(r"kindest/node:v(\d+)\.(\d+)\.\d+(@sha256:[0-9a-f]{64})?", images.pop())
    assert match, "kind-config.yaml's node image is not an exact kindest/node version"
    # kubernetes-validate keeps one schema set per minor version.
    return f"{match[1]}.{match[2]}.0"


@dataclass(frozen=True)
class Rendered:
    """One scenario's rendered manifests: every object, and the NOTES text."""

    scenario: str
    objects: list[dict]
    notes: str

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"{self.scenario}: expected one {kind} named *{name_suffix}, got {len(found)}"
        return found[0]


def render(values: dict | None = None, scenario: str = "inline") -> Rendered:
    """Render the chart with Helm's engine (schema-validated, as `helm template` does)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects, notes = [], ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(scenario, objects, notes)


def scenario_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def pytest_generate_tests(metafunc):
    """A test taking ``scenario`` runs once per ci/ values file."""
    if "scenario" in metafunc.fixturenames:
        metafunc.parametrize("scenario", SCENARIOS, ids=[p.name for p in SCENARIOS])


@pytest.fixture(scope="session")
def render_chart():
    """``render(values)`` for tests that need values of their own."""
    return render


@pytest.fixture(scope="session")
def kube_version() -> str:
    return kind_kubernetes_version()


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    """Every ci/ scenario, rendered once."""
    return {path.name: render(scenario_values(path), path.name) for path in SCENARIOS}


@pytest.fixture(scope="session")
def crd_schemas() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """CRD JSON schemas by (apiVersion, kind), from ../shared/schemas."""
    if not SHARED_SCHEMAS.is_dir():
        pytest.skip(f"{SHARED_SCHEMAS} is absent: custom resources cannot be checked against their CRD schemas")
    validators = {}
    for path in SHARED_SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        api_version = schema["properties"]["apiVersion"]["const"]
        kind = schema["properties"]["kind"]["const"]
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validators[(api_version, kind)] = cls(schema)
    return validators
