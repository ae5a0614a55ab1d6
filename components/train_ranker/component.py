from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_ranker(
    ranking_set: Input[Dataset],
    dataset: Input[Dataset],
    epochs: int,
    ignore_features: str,
    seed: int,
    ranker: Output[Model],
    ranker_metrics: Output[Metrics],
):
    """Train the DCN-v2 ranking model (BCE) on the ranking set; AUC and log loss on held-out users."""
    from recflow.pipeline import steps
    from recflow.pipeline.parameters import feature_list
    from recflow.ranking.model import RankerConfig

    config = RankerConfig(epochs=epochs, ignore_features=feature_list(ignore_features), seed=seed)
    metrics = steps.train_ranker(ranking_set.path, dataset.path, ranker.path, config)
    for part in ("train", "validation"):
        for name, value in metrics[part].items():
            ranker_metrics.log_metric(f"{part}/{name}", value)
    ranker_metrics.log_metric("samples_per_second", metrics["samples_per_second"])
    ranker.metadata.update({"framework": "pytorch", "model": "dcn-v2"})
