"""The kind path: scripts, pinned versions, ports, Makefile targets and the README's commands.

No container engine here: the scripts are parsed (`bash -n`) and their version and
image plumbing is run for real; `make kind-smoke` on a machine with Docker runs
the end-to-end.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "scripts" / "kind").glob("*.sh"))
VERSIONS = ROOT / "manifests" / "versions.env"
EXPECTED_PINS = {
    "KIND_NODE_IMAGE", "CERT_MANAGER_VERSION", "KNATIVE_SERVING_VERSION", "KNATIVE_KOURIER_VERSION",
    "KSERVE_VERSION", "KFP_VERSION", "TRAINER_VERSION", "KUBE_PROMETHEUS_STACK_VERSION",
}


def pins() -> dict[str, str]:
    lines = [line for line in VERSIONS.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_scripts_parse_and_fail_fast():
    assert {p.name for p in SCRIPTS} >= {"common.sh", "up.sh", "down.sh", "images.sh", "smoke.sh"}
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        if script.name != "common.sh":  # sourced, not run
            assert "\nset -euo pipefail\n" in script.read_text(), script.name
            assert script.stat().st_mode & 0o111, f"{script.name} is not executable"


def test_every_version_is_pinned_exactly_in_one_file():
    found = pins()
    assert set(found) == EXPECTED_PINS
    for name, value in found.items():
        assert re.search(r"\d+\.\d+\.\d+$", value), f"{name}={value} is not an exact version"
        assert not re.search(r"latest|master|main", value), f"{name}={value}"


def test_up_script_takes_every_version_from_the_versions_file():
    up = (ROOT / "scripts" / "kind" / "up.sh").read_text()
    for name in EXPECTED_PINS - {"KIND_NODE_IMAGE"}:
        assert f"${name}" in up, f"up.sh does not use {name}"
    # no version typed into a URL or a chart reference by hand
    code = "\n".join(line for line in up.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"(ref=|download/|--version )v?\d+\.\d+", code)


def test_sourced_versions_and_images_are_what_the_files_say():
    """common.sh, as the scripts source it, yields the pins and recflow/images.yaml's names."""
    script = f"source {ROOT}/scripts/kind/common.sh; " + "; ".join(
        f'echo "{name}=${name}"' for name in sorted(EXPECTED_PINS | {"PIPELINE_IMAGE", "SERVING_IMAGE"}))
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin"})
    sourced = dict(line.split("=", 1) for line in result.stdout.splitlines())
    images = yaml.safe_load((ROOT / "recflow" / "images.yaml").read_text())
    assert sourced == {**pins(), "PIPELINE_IMAGE": images["pipeline"], "SERVING_IMAGE": images["serving"]}


def test_kind_config_runs_the_pinned_node_image_and_maps_the_node_ports():
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert {node["image"] for node in config["nodes"]} == {pins()["KIND_NODE_IMAGE"]}
    mapped = {m["containerPort"]: m["hostPort"] for node in config["nodes"] for m in node.get("extraPortMappings", [])}
    # what listens on those node ports: Kourier, the Kubeflow Pipelines UI, Grafana
    kourier = yaml.safe_load((ROOT / "manifests" / "kourier-nodeport.yaml").read_text())
    ui = yaml.safe_load((ROOT / "manifests" / "kubeflow-pipelines-ui-nodeport.yaml").read_text())
    grafana = yaml.safe_load((ROOT / "manifests" / "values" / "kube-prometheus-stack.yaml").read_text())
    node_ports = {
        kourier["spec"]["ports"][0]["nodePort"]: 8080,
        ui["spec"]["ports"][0]["nodePort"]: 8081,
        grafana["grafana"]["service"]["nodePort"]: 3000,
    }
    assert mapped == node_ports


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("target, script", [("kind-up", "up.sh"), ("kind-down", "down.sh"),
                                            ("kind-smoke", "smoke.sh"), ("images", "images.sh")])
def test_make_targets_call_the_scripts(target, script):
    result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True)
    assert f"scripts/kind/{script}" in result.stdout


def run_on_kind_section() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Run on kind\n(.*?)(?=^## )", readme, re.M | re.S)
    assert match, "README.md has no '## Run on kind' section"
    return match.group(1)


def shell_commands(section: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = []
    for block in blocks:
        for line in re.sub(r"\\\n", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def test_readme_run_on_kind_uses_only_real_make_targets_and_cli_commands():
    commands = shell_commands(run_on_kind_section())
    makes = [c for c in commands if c[0] == "make"]
    recflows = [c for c in commands if c[0] == "recflow"]
    assert {t for c in makes for t in c[1:] if "=" not in t} <= make_targets()
    assert {"kind-up", "images", "kind-smoke", "kind-down"} <= {t for c in makes for t in c[1:]}
    assert recflows, "the section shows no recflow command"
    recflow = ROOT / ".venv" / "bin" / "recflow"
    for command in recflows:
        words = [w for w in command[1:] if not w.startswith("-")][:2]
        # the subcommand path must exist: its --help exits 0
        result = subprocess.run([str(recflow), *words, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"`recflow {' '.join(words)}` is not a command: {result.stderr[-500:]}"
        for flag in (w.split("=")[0] for w in command[1:] if w.startswith("--")):
            assert flag in result.stdout, f"`recflow {' '.join(words)}` has no {flag}"
