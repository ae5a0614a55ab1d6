from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def build_training_set(
    dataset: Input[Dataset],
    split: Input[Dataset],
    online: Input[Artifact],
    workspace: str,
    feature_service: str,
    negatives: str,
    negatives_per_positive: float,
    seed: int,
    training_set: Output[Dataset],
):
    """Labels from the training split joined point-in-time with the feature service (row count checked)."""
    from recflow.features.training_set import TrainingSetConfig
    from recflow.pipeline import steps

    config = TrainingSetConfig(
        feature_service=feature_service, negatives=negatives, negatives_per_positive=negatives_per_positive, seed=seed
    )
    info = steps.training_set(dataset.path, split.path, workspace, training_set.path, config)
    training_set.metadata.update({"rows": info["rows"], "positives": info["positives"], "feature_service": feature_service})
