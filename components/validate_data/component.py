from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def validate_data(raw: Input[Dataset], dataset: Output[Dataset], report: Output[Markdown]):
    """Check schema, types, nulls, ranges, duplicates and timestamps; fail the run on any problem.

    The report names the rows and columns at fault. The typed, day-partitioned
    dataset is written only when every check passes, so nothing downstream runs
    on bad data.
    """
    from recflow.pipeline import steps

    manifest = steps.validate(raw.path, dataset.path, report.path)
    dataset.metadata.update({k: manifest[k] for k in ("num_events", "num_users", "num_items", "start", "end")})
