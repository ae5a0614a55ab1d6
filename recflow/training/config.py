"""Training hyper-parameters: one validated object, stored next to the model.

The defaults are sized for the local platform: a training set of ~500k rows
trains for 2 epochs in about a minute on two CPU processes. Unknown keys are
rejected so that a typo in a pipeline parameter fails the run instead of being
silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run of the two-tower model."""

    model_config = ConfigDict(extra="forbid")

    # Seeds parameter initialisation and the per-epoch shuffle; same seed and
    # data give bit-identical weights.
    seed: int = 42
    # Full passes over the training set.
    epochs: int = Field(default=2, ge=1)
    # GLOBAL batch: rows per optimiser step summed over all processes. Each of
    # the N processes trains on batch_size / N of them, so it must divide evenly.
    batch_size: int = Field(default=2048, ge=1)
    # AdamW step size.
    learning_rate: float = Field(default=3e-3, gt=0)
    # AdamW decoupled weight decay.
    weight_decay: float = Field(default=1e-6, ge=0)
    # Width of the user and item vectors (and of every embedding table).
    embedding_dim: int = Field(default=32, ge=1)
    # Hidden width of the tower MLPs.
    hidden_dim: int = Field(default=64, ge=1)
    # Standard deviation of the initial id and category embeddings; None
    # picks the objective's default (see `initial_embedding_std`).
    embedding_init_std: float | None = Field(default=None, gt=0)
    # Most recent history items fed to the user tower; older ones are dropped.
    max_history: int = Field(default=20, ge=1)
    # Feature columns of the training set the model leaves out; "*" leaves
    # out every one, so the towers read the user and item ids only (naming a
    # column the set lacks is an error). For data whose point-in-time
    # features mean little: on MovieLens under the stratified protocol the ids
    # alone score best (docs/design.md, "The stratified protocol").
    ignore_features: list[str] = []
    # What the model is fitted to:
    # - "bce": binary cross-entropy on every row of the training set (clicks
    #   against the negatives the training set holds); `batch_size` counts rows.
    # - "in_batch_softmax": a softmax over the items of the GLOBAL batch. Only
    #   the positive rows (label 1) are used, label-0 rows are ignored, and
    #   `batch_size` counts positives: each positive's item is the target and
    #   the other positives' items are its negatives. Ranks exchange their item
    #   vectors with a differentiable all_gather, so N processes compute the
    #   same loss and update as one process on the whole batch.
    objective: Literal["bce", "in_batch_softmax"] = "bce"
    # in_batch_softmax only: logits are (user · item + item bias) / temperature.
    temperature: float = Field(default=1.0, gt=0)
    # in_batch_softmax only: subtract log Q(item), Q being the item's share of
    # the positives of the training set (the probability that it is drawn into
    # a batch), from every in-batch logit (Yi et al. 2019, "Sampling-bias-
    # corrected neural modeling"). Without it popular items, which appear as
    # negatives more often, are pushed down in proportion to their frequency.
    logq_correction: bool = True
    # "auto" picks CUDA when it is available, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Optimiser steps between two progress lines (loss, samples/s).
    log_every_steps: int = Field(default=50, ge=1)
    # Optimiser steps between two checkpoints, on top of the one at the end of
    # every epoch; 0 checkpoints at epoch ends only.
    checkpoint_every_steps: int = Field(default=200, ge=0)

    def initial_embedding_std(self) -> float:
        """`embedding_init_std`, or the objective's default when it is None.

        bce: 0.3. Much smaller and both towers start out nearly constant, so
        the user x item interaction sits at the saddle of the dot product and
        is learnt only after a long plateau. in_batch_softmax: 0.05. The
        softmax has no such plateau, and what an id row never learns then
        stays close to zero instead of adding noise to every score.
        """
        if self.embedding_init_std is not None:
            return self.embedding_init_std
        return 0.3 if self.objective == "bce" else 0.05

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a config from a JSON file (unknown keys are an error)."""
        return cls.model_validate_json(Path(path).read_text())

    def local_batch_size(self, world_size: int) -> int:
        """Rows each of `world_size` processes trains on per step.

        Raises ValueError when the global batch cannot be split evenly, because
        an uneven split would weight the processes' gradients unequally and
        break the equivalence with single-process training.
        """
        if world_size < 1:
            raise ValueError(f"world size must be >= 1, got {world_size}")
        if self.batch_size % world_size:
            raise ValueError(
                f"batch_size={self.batch_size} is the global batch and must be divisible by the "
                f"number of training processes ({world_size}); use e.g. "
                f"{max(world_size, self.batch_size - self.batch_size % world_size)}"
            )
        return self.batch_size // world_size
