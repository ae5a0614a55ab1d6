from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def compute_features(dataset: Input[Dataset], split: Input[Dataset], workspace: str, features: Output[Artifact]):
    """Update the offline feature tables in the workspace's Feast repo, incrementally by day."""
    import json

    from recflow.pipeline import steps

    result = steps.compute_feature_tables(dataset.path, split.path, workspace)
    with open(features.path, "w") as handle:
        json.dump(result, handle, indent=2)
    features.metadata.update({"computed_days": len(result["computed_days"]), **result["rows"]})
