from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def split_events(
    dataset: Input[Dataset], protocol: str, test_days: int, start_date: str, end_date: str, split: Output[Dataset]
):
    """Hold out test interactions: a global time split (``time``) or a per-user 75/25 split (``stratified``).

    start_date / end_date (ISO dates, inclusive, empty = unbounded) restrict the days used.
    """
    from recflow.pipeline import steps

    info = steps.split(dataset.path, split.path, protocol, test_days, start_date, end_date)
    split.metadata.update(info)
