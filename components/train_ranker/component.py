from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_ranker(
    ranking_set: Input[Dataset], dataset: Input[Dataset], epochs: int, seed: int, ranker: Output[Model], ranker_metrics: Output[Metrics]
):
    """Train the DCN-v2 ranking model (BCE) on the ranking set."""
    from recflow.pipeline import steps
    from recflow.ranking.model import RankerConfig

    metrics = steps.train_ranker(ranking_set.path, dataset.path, ranker.path, RankerConfig(epochs=epochs, seed=seed))
    for name in ("train_auc", "train_log_loss", "samples_per_second"):
        if name in metrics:
            ranker_metrics.log_metric(name, metrics[name])
    ranker.metadata.update({"framework": "pytorch", "model": "dcn-v2"})
