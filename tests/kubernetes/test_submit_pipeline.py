"""``recflow pipeline submit`` against a faked ``kfp.Client``, and the cluster settings the submitted YAML carries.

No Kubeflow Pipelines server runs here: ``kfp.Client`` is replaced by a fake
with the methods ``submit`` calls, which records the calls and reads the
package it is given. The pipeline compilation and the parameter validation
are real.
"""

from __future__ import annotations

from types import SimpleNamespace

import yaml

from recflow import cli
from recflow.kubernetes.pipeline import SECRETS, TRAINING_CONFIG_MAP, WORKSPACE_CLAIM, WORKSPACE_MOUNT
from recflow.kubernetes.submit import PIPELINE_NAME, submit
from recflow.kubernetes.trainjob import TRAINJOB_ENV
from recflow.pipeline.local import COMPILED_PIPELINE
from recflow.pipeline.parameters import PipelineParameters


class FakeKfpClient:
    """The ``kfp.Client`` methods ``submit`` uses, faked: one KFP server's pipelines, versions, experiments, runs."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host
        self.pipelines: dict[str, str] = {}
        self.uploads: list[tuple[str, str]] = []  # (version name, package text)
        self.experiments: list[str] = []
        self.runs: list[dict] = []

    def get_pipeline_id(self, name):
        return self.pipelines.get(name)

    def upload_pipeline(self, pipeline_package_path, pipeline_name=None, description=None):
        self.pipelines[pipeline_name] = f"pipeline-{len(self.pipelines)}"
        self.uploads.append((pipeline_name, open(pipeline_package_path).read()))
        return SimpleNamespace(pipeline_id=self.pipelines[pipeline_name])

    def list_pipeline_versions(self, pipeline_id, page_size, sort_by):
        assert (page_size, sort_by) == (1, "created_at desc")
        return SimpleNamespace(pipeline_versions=[SimpleNamespace(pipeline_version_id=f"version-{len(self.uploads)}")])

    def upload_pipeline_version(self, pipeline_package_path, pipeline_version_name, pipeline_id):
        assert pipeline_id in self.pipelines.values()
        self.uploads.append((pipeline_version_name, open(pipeline_package_path).read()))
        return SimpleNamespace(pipeline_version_id=f"version-{len(self.uploads)}")

    def create_experiment(self, name, namespace=None):
        self.experiments.append(name)
        return SimpleNamespace(experiment_id=f"experiment-{name}")

    def run_pipeline(self, experiment_id, job_name, params, pipeline_id, version_id):
        self.runs.append({"experiment_id": experiment_id, "job_name": job_name, "params": params,
                          "pipeline_id": pipeline_id, "version_id": version_id})  # fmt: skip
        return SimpleNamespace(run_id=f"run-{len(self.runs)}")


def test_submit_uploads_the_compiled_pipeline_then_new_versions_and_runs_it():
    """Fakes ``kfp.Client``: the first submission creates the pipeline, the next adds a version; each starts a run.

    The package uploaded is the checked-in compiled pipeline (compiled afresh),
    the run's arguments are every validated parameter plus the workspace where
    the pods mount the volume, and the run URL points at the host.
    """
    client = FakeKfpClient()
    first = submit("http://kfp.example:8080/", PipelineParameters(epochs=3), client=client)
    second = submit("http://kfp.example:8080", PipelineParameters(), experiment="nightly", run_name="nightly-1", client=client)

    assert client.pipelines == {PIPELINE_NAME: first.pipeline_id} and second.pipeline_id == first.pipeline_id
    assert [name for name, _ in client.uploads][0] == PIPELINE_NAME
    assert client.uploads[1][0].startswith(f"{PIPELINE_NAME}-")
    assert all(text == COMPILED_PIPELINE.read_text() for _, text in client.uploads)
    assert (first.version_id, second.version_id) == ("version-1", "version-2")
    assert client.experiments == ["recflow", "nightly"]
    assert client.runs[0]["params"] == {"workspace": WORKSPACE_MOUNT, **PipelineParameters(epochs=3).model_dump()}
    assert client.runs[1]["job_name"] == "nightly-1" and client.runs[1]["experiment_id"] == "experiment-nightly"
    assert first.url == "http://kfp.example:8080/#/runs/details/run-1"


def test_cli_submit_validates_parameters_before_sending(monkeypatch, capsys):
    """Replaces ``kfp.Client`` by the fake (monkeypatched) and runs ``recflow pipeline submit`` itself.

    Parameters are validated and typed from the command line; a misspelt
    one is refused with exit code 2 before anything reaches the server.
    """
    clients: list[FakeKfpClient] = []
    monkeypatch.setattr("kfp.Client", lambda host: clients.append(FakeKfpClient(host)) or clients[-1])

    assert cli.main(["pipeline", "submit", "--host", "http://localhost:8081", "--protocol", "stratified",
                     "--param", "epochs=2", "--workspace", "/data/ws"]) == 0  # fmt: skip
    (client,) = clients
    params = client.runs[0]["params"]
    assert (client.host, params["workspace"], params["epochs"], params["objective"]) == (
        "http://localhost:8081", "/data/ws", 2, "in_batch_softmax")
    assert "http://localhost:8081/#/runs/details/run-1" in capsys.readouterr().out

    assert cli.main(["pipeline", "submit", "--host", "http://localhost:8081", "--param", "epoch=2"]) == 2
    assert "epoch" in capsys.readouterr().err
    assert len(clients) == 1


def test_every_task_carries_the_cluster_settings():
    """Reads the checked-in compiled YAML (no API involved): its kfp.kubernetes platform settings.

    Every task mounts the workspace claim where ``submit`` points the
    workspace, gets both secrets as optional environment, and has resource
    requests and limits; the train task alone gets the TrainJob settings.
    """
    pipeline, platform = yaml.safe_load_all(COMPILED_PIPELINE.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors.keys() == pipeline["deploymentSpec"]["executors"].keys()
    for name, settings in executors.items():
        assert [(m["constant"], m["mountPath"]) for m in settings["pvcMount"]] == [(WORKSPACE_CLAIM, WORKSPACE_MOUNT)], name
        secrets = {s["secretName"]: {k["secretKey"]: k["envVar"] for k in s["keyToEnv"]} for s in settings["secretAsEnv"]}
        assert secrets == SECRETS and all(s["optional"] for s in settings["secretAsEnv"]), name
        resources = pipeline["deploymentSpec"]["executors"][name]["container"]["resources"]
        assert {"resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"} <= resources.keys()
        config_maps = settings.get("configMapAsEnv", [])
        if name == "exec-train-model":
            assert [(c["configMapName"], c["keyToEnv"][0]["envVar"], c["optional"]) for c in config_maps] == [
                (TRAINING_CONFIG_MAP, TRAINJOB_ENV, True)]
        else:
            assert config_maps == [], name
