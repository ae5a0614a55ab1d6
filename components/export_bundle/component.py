from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def export_bundle(
    model: Input[Model],
    ranker: Input[Model],
    evaluation: Input[Artifact],
    dataset: Input[Dataset],
    workspace: str,
    bundle: Output[Model],
):
    """Write the serving bundle (models, ANN index, item snapshot, stack config, model card); register it as blessed."""
    from recflow.pipeline import steps

    result = steps.export_bundle(model.path, ranker.path, evaluation.path, dataset.path, workspace, bundle.path)
    bundle.metadata.update(result)
