from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def materialize_features(dataset: Input[Dataset], features: Input[Artifact], workspace: str, online: Output[Artifact]):
    """``feast apply`` the definitions and materialize the newest values into the online store."""
    import json

    from recflow.pipeline import steps

    result = steps.apply_and_materialize(dataset.path, workspace)
    with open(online.path, "w") as handle:
        json.dump(result, handle, indent=2)
    online.metadata.update(result)
