"""Load an exported model and score users against items.

The export directory written by :mod:`recflow.training.train` is
self-contained: weights, the fitted preprocessor (vocabularies, numeric
statistics, feature spec) and the config that sized the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recflow.training.config import TrainConfig
from recflow.training.features import Preprocessor
from recflow.training.model import TwoTowerModel
from recflow.training.train import CONFIG_FILE, MODEL_FILE, PREPROCESSOR_FILE

# Users scored per matrix product: bounds the temporary [chunk, n_items] block.
USER_CHUNK = 4096


class TrainedModel:
    """A trained two-tower model with the preprocessor it was trained with."""

    def __init__(self, model: TwoTowerModel, preprocessor: Preprocessor) -> None:
        self.model = model.eval()
        self.preprocessor = preprocessor

    @classmethod
    def load(cls, directory: str | Path) -> TrainedModel:
        directory = Path(directory)
        preprocessor = Preprocessor.load(directory / PREPROCESSOR_FILE)
        config = TrainConfig.from_file(directory / CONFIG_FILE)
        model = TwoTowerModel.from_preprocessor(
            preprocessor, config.embedding_dim, config.hidden_dim, config.initial_embedding_std()
        )
        model.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
        return cls(model, preprocessor)

    @torch.inference_mode()
    def user_vectors(self, users: pd.DataFrame) -> np.ndarray:
        """[n_users, embedding_dim] float32; `users` holds user_id and the user feature columns."""
        return self.model.user_vectors(self.preprocessor.encode_users(users)).numpy()

    @torch.inference_mode()
    def item_vectors(self, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """([n_items, embedding_dim] vectors, [n_items] biases), both float32."""
        encoded = self.preprocessor.encode_items(items)
        return self.model.item_vectors(encoded).numpy(), self.model.item_bias(encoded).numpy()

    def score(self, users: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
        """[n_users, n_items] float32 logits: user_vectors @ item_vectors.T + item_bias.

        Unknown ids and categories score through the model's "unknown" rows;
        missing feature columns raise ValueError naming them.
        """
        item_vectors, item_bias = self.item_vectors(items)
        user_vectors = self.user_vectors(users)
        scores = np.empty((len(user_vectors), len(item_vectors)), dtype=np.float32)
        for start in range(0, len(user_vectors), USER_CHUNK):
            block = scores[start : start + USER_CHUNK]
            np.matmul(user_vectors[start : start + USER_CHUNK], item_vectors.T, out=block)
            block += item_bias
        return scores
