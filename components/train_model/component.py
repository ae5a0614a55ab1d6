from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_model(
    training_set: Input[Dataset],
    objective: str,
    ignore_features: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    embedding_dim: int,
    nproc_per_node: int,
    seed: int,
    model: Output[Model],
    train_metrics: Output[Metrics],
):
    """Train the two-tower model with ``torchrun`` (gloo on CPU, nccl on GPU)."""
    from recflow.pipeline import steps
    from recflow.pipeline.parameters import feature_list
    from recflow.training.config import TrainConfig

    config = TrainConfig(
        objective=objective,
        ignore_features=feature_list(ignore_features),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        embedding_dim=embedding_dim,
        seed=seed,
    )
    metrics = steps.train(training_set.path, model.path, config, nproc_per_node)
    train_metrics.log_metric("final_loss", metrics["epoch_losses"][-1])
    train_metrics.log_metric("samples_per_second", metrics["samples_per_second"])
    train_metrics.log_metric("world_size", metrics["world_size"])
    model.metadata.update({"framework": "pytorch", "world_size": metrics["world_size"]})
