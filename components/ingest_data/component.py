from kfp import dsl
from kfp.dsl import Dataset, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def ingest_data(data_source: str, seed: int, raw: Output[Dataset]):
    """Bring a data source in as raw canonical tables (validated by the next step).

    data_source: ``world:<tiny|demo|bench>`` (seeded synthetic world), a MovieLens
    file or directory, or a recflow dataset directory.
    """
    from recflow.pipeline import steps

    info = steps.ingest(data_source, raw.path, seed=seed)
    raw.metadata.update({"source": info["source"], **{f"{k}_rows": v for k, v in info["rows"].items()}})
