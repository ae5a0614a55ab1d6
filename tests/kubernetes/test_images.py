"""The images: what the Dockerfiles build, under which names, and who names them.

Docker is not on this machine: the Dockerfiles are checked as text, and
`make images`' script runs against a stand-in `docker` that records the
commands it is given (what a real docker would build and tag).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from recflow.images import image, images

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
PIPELINE_YAML = ROOT / "pipelines" / "training_pipeline.yaml"


def stages(dockerfile: Path) -> list[list[str]]:
    """The instructions of each build stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def arg_default(dockerfile: Path, name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.M)
    return value


def test_images_file_names_both_images():
    assert set(images()) == {"pipeline", "serving"}
    for reference in images().values():
        assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+", reference), reference


def test_compiled_pipeline_runs_in_the_image_the_dockerfile_builds():
    """Every step of pipelines/training_pipeline.yaml names recflow/images.yaml's pipeline image,
    which is the tag scripts/kind/images.sh gives docker/pipeline.Dockerfile's build (next test)."""
    # The file holds the pipeline spec and, after it, its Kubernetes platform spec.
    (spec,) = [d for d in yaml.safe_load_all(PIPELINE_YAML.read_text()) if "deploymentSpec" in d]
    used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert len(spec["deploymentSpec"]["executors"]) >= 10
    assert used == {image("pipeline")}


def test_make_images_builds_and_tags_the_named_images(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stand_in = bin_dir / "docker"
    stand_in.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    env.pop("PIPELINE_IMAGE", None)
    env.pop("SERVING_IMAGE", None)
    result = subprocess.run(["make", "-s", "images"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pipeline_build, serving_build = calls.read_text().splitlines()
    assert pipeline_build.startswith("build ")
    assert f"-f {DOCKER}/pipeline.Dockerfile" in pipeline_build
    assert f"-t {image('pipeline')} " in pipeline_build + " "
    assert "--build-arg TORCH_VARIANT=cpu" in pipeline_build
    assert f"-f {DOCKER}/serving.Dockerfile" in serving_build
    assert f"--build-arg PIPELINE_IMAGE={image('pipeline')}" in serving_build
    assert f"-t {image('serving')} " in serving_build + " "
    # without kind (not on this machine) it says how the images get into the cluster
    assert "make kind-up" in result.stdout


def test_pipeline_image_is_multi_stage_pinned_non_root_without_build_tools():
    dockerfile = DOCKER / "pipeline.Dockerfile"
    builder, final = stages(dockerfile)
    base = arg_default(dockerfile, "PYTHON_IMAGE")
    # an exact Python release on an exact Debian, optionally with a digest
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
    assert builder[0] == "FROM ${PYTHON_IMAGE} AS builder" and final[0] == "FROM ${PYTHON_IMAGE}"
    final_text = "\n".join(final)
    assert "apt-get install" not in final_text and "build-essential" not in final_text
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    (user,) = [line for line in final if line.startswith("USER ")]
    assert user == "USER ${UID}:${UID}" and int(arg_default(dockerfile, "UID")) >= 10000
    assert "RECFLOW_FEATURE_REPO=/opt/recflow/feature_repo" in final_text


def test_torch_is_the_projects_pin_from_the_cpu_index_by_default():
    dockerfile = DOCKER / "pipeline.Dockerfile"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch=={arg_default(dockerfile, "TORCH_VERSION")}"' in pyproject
    assert arg_default(dockerfile, "TORCH_VARIANT") == "cpu"
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in (
        dockerfile.read_text()
    )


def test_serving_image_is_the_pipeline_image_with_the_server_entrypoint():
    dockerfile = DOCKER / "serving.Dockerfile"
    (stage,) = stages(dockerfile)
    assert stage[0] == "FROM ${PIPELINE_IMAGE}"
    assert arg_default(dockerfile, "PIPELINE_IMAGE") == image("pipeline")
    assert 'ENTRYPOINT ["recflow", "serve"]' in stage
    assert any(line.startswith("USER ") and not line.startswith("USER 0") for line in stage)
    assert "RUN" not in " ".join(line.split()[0] for line in stage)  # adds no packages
    # the entrypoint is a real command, and takes the arguments the chart gives it
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "recflow"), "serve", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--bundle", "--feature-repo", "--config", "--port"):
        assert flag in result.stdout


def test_build_context_leaves_out_environments_workspaces_and_tests():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "the context is an allow-list"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for dockerfile in DOCKER.glob("*.Dockerfile"):
        for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.M):
            copied |= set(source.split())
    assert copied == allowed, "every file the Dockerfiles copy, and only those, is in the context"
    assert not allowed & {".venv", ".recflow", "tests", "helm", ".git"}
