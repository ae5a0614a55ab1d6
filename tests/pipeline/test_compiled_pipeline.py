"""The compiled pipeline YAML checked into pipelines/ is what the code compiles to."""

from __future__ import annotations

import yaml

from components import PIPELINE_IMAGE
from recflow.pipeline.local import COMPILED_PIPELINE, compile_pipeline


def test_checked_in_yaml_is_not_stale(tmp_path):
    fresh = compile_pipeline(tmp_path / "training_pipeline.yaml")
    assert fresh.read_text() == COMPILED_PIPELINE.read_text(), (
        "pipelines/training_pipeline.yaml is stale: run `recflow pipeline compile` and commit it"
    )


def _pipeline_spec() -> dict:
    """The pipeline document (the second document holds the kfp.kubernetes platform settings)."""
    return next(yaml.safe_load_all(COMPILED_PIPELINE.read_text()))


def test_every_component_runs_in_the_project_image():
    spec = _pipeline_spec()
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 11
    assert {executor["container"]["image"] for executor in executors.values()} == {PIPELINE_IMAGE}
    # The image carries kfp and recflow; nothing is pip-installed at run time.
    for executor in executors.values():
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_ui_parameters_have_defaults_except_the_workspace():
    spec = _pipeline_spec()
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["data_source"]["defaultValue"] == "world:demo"
    assert "defaultValue" not in parameters["workspace"]
