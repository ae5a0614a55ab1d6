"""``recflow pipeline submit --host URL``: upload the training pipeline to Kubeflow Pipelines and start a run.

    recflow pipeline submit --host http://localhost:8081 [--experiment recflow] [--param epochs=3 ...]

The pipeline is compiled from the code at submission (the same YAML
``recflow pipeline compile`` checks in), so what runs is what this checkout
defines. It is uploaded as a new version of the pipeline ``recflow-training``
(the pipeline is created on first use), named after the YAML's content hash
and the time, so every run in the UI links to the exact definition it ran.
Parameters are validated against :mod:`recflow.pipeline.parameters` before
anything is sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recflow.kubernetes.pipeline import WORKSPACE_MOUNT
from recflow.pipeline.parameters import PipelineParameters

PIPELINE_NAME = "recflow-training"
PIPELINE_DESCRIPTION = "Events to a blessed two-tower recommender bundle"


@dataclass(frozen=True)
class Submitted:
    run_id: str
    pipeline_id: str
    version_id: str
    experiment_id: str
    url: str


def submit(
    host: str,
    parameters: PipelineParameters,
    experiment: str = "recflow",
    workspace: str | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    client: Any = None,
) -> Submitted:
    """Compile, upload as a new pipeline version, and run it in ``experiment``; return the run's ids and URL.

    ``workspace`` defaults to where the tasks mount the workspace volume
    (:data:`recflow.kubernetes.pipeline.WORKSPACE_MOUNT`). ``client`` defaults
    to ``kfp.Client(host=host)``.
    """
    from recflow.pipeline.local import compile_pipeline

    if client is None:
        import kfp

        client = kfp.Client(host=host)
    now = f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    with tempfile.TemporaryDirectory(prefix="recflow-submit-") as scratch:
        package = compile_pipeline(Path(scratch) / "training_pipeline.yaml")
        version_name = f"{PIPELINE_NAME}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}-{now}"
        pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(str(package), pipeline_name=PIPELINE_NAME,
                                                 description=PIPELINE_DESCRIPTION).pipeline_id  # fmt: skip
            # A new pipeline comes with its first version: the package just uploaded.
            versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
            version_id = versions.pipeline_versions[0].pipeline_version_id
        else:
            version_id = client.upload_pipeline_version(
                str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id
            ).pipeline_version_id
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    run = client.run_pipeline(
        experiment_id=experiment_id,
        job_name=run_name or f"{PIPELINE_NAME}-{now}",
        params={"workspace": workspace or WORKSPACE_MOUNT, **parameters.model_dump()},
        pipeline_id=pipeline_id,
        version_id=version_id,
    )
    return Submitted(run.run_id, pipeline_id, version_id, experiment_id, f"{host.rstrip('/')}/#/runs/details/{run.run_id}")
