from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def build_ranking_set(
    dataset: Input[Dataset],
    split: Input[Dataset],
    online: Input[Artifact],
    model: Input[Model],
    workspace: str,
    feature_service: str,
    negatives_per_positive: float,
    seed: int,
    ranking_set: Output[Dataset],
):
    """The ranker's rows: logged exposures (or random negatives) with the ranking feature service and the retrieval score."""
    from recflow.features.training_set import TrainingSetConfig
    from recflow.pipeline import steps

    config = TrainingSetConfig(feature_service=feature_service, negatives_per_positive=negatives_per_positive, seed=seed)
    info = steps.ranking_set(dataset.path, split.path, workspace, model.path, ranking_set.path, config)
    ranking_set.metadata.update({"rows": info["rows"], "positives": info["positives"], "negatives": info["negatives"]})
