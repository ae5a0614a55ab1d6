"""The two-tower retrieval model.

A user and an item are each mapped to a vector of `embedding_dim`; the click
logit is their dot product plus an item bias. Because the user never interacts
with the item inside a tower, all item vectors can be computed once and a user
is scored against the whole catalogue with one matrix product (serving,
evaluation, an ANN index).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recflow.training.features import UNKNOWN_INDEX, Preprocessor


class _CategoricalEmbedding(nn.Module):
    """Sum of one embedding per categorical column, all held in a single table.

    Column j's indices are shifted by the sizes of columns < j, so one
    `embedding_bag` call embeds every column of every row. An unknown
    category (index 0) contributes a zero vector rather than an untrained one.
    """

    offsets: torch.Tensor

    def __init__(self, sizes: list[int], dim: int, init_std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(sum(sizes), dim) * init_std)
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self, categories: torch.Tensor) -> torch.Tensor:
        known = (categories != UNKNOWN_INDEX).to(self.weight.dtype)
        return F.embedding_bag(categories + self.offsets, self.weight, per_sample_weights=known, mode="sum")


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class _Mix(nn.Module):
    """A tower's parts, concatenated, to its vector: a linear map plus a ReLU MLP.

    A tower of one part (the id embedding alone) has nothing to mix: the
    embedding is the vector, as in matrix factorisation.
    """

    def __init__(self, parts: int, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(parts * dim, dim, bias=False) if parts > 1 else None
        self.mlp = _mlp(parts * dim, hidden_dim, dim) if parts > 1 else None

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return parts
        return self.linear(parts) + self.mlp(parts)


class TwoTowerModel(nn.Module):
    """User tower · item tower + item bias.

    User tower: user-id embedding, categorical embeddings, an MLP over the
    numeric features and the mean embedding of the recent history items,
    concatenated and mixed by a linear map plus a ReLU MLP. The history items
    use the item-id embedding table, so what the item tower learns about an
    item also describes the users who clicked it. Item tower: item-id
    embedding, categorical embeddings and numeric MLP, mixed the same way.

    The linear path gives the id embeddings a direct route to the dot
    product, as in matrix factorisation, which an MLP alone learns poorly
    (Rendle et al., RecSys 2020); a tower of the id embedding alone is that
    embedding, and the model is then matrix factorisation with an item bias
    (measurements: docs/design.md, "Towers").

    Item bias: a learned per-item scalar plus a linear term on the item's
    numeric features (popularity, CTR), so popular items can rank higher
    without distorting the vectors.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        user_category_sizes: list[int],
        item_category_sizes: list[int],
        num_user_numeric: int,
        num_item_numeric: int,
        use_history: bool,
        embedding_dim: int,
        hidden_dim: int,
        init_std: float,
    ) -> None:
        super().__init__()
        self.use_history = use_history
        self.user_embedding = nn.Embedding(num_users, embedding_dim, padding_idx=UNKNOWN_INDEX)
        self.item_embedding = nn.Embedding(num_items, embedding_dim, padding_idx=UNKNOWN_INDEX)
        for table in (self.user_embedding, self.item_embedding):
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():
                table.weight[UNKNOWN_INDEX].zero_()

        self.user_categorical = (
            _CategoricalEmbedding(user_category_sizes, embedding_dim, init_std) if user_category_sizes else None
        )
        self.item_categorical = (
            _CategoricalEmbedding(item_category_sizes, embedding_dim, init_std) if item_category_sizes else None
        )
        self.user_numeric = _mlp(num_user_numeric, hidden_dim, embedding_dim) if num_user_numeric else None
        self.item_numeric = _mlp(num_item_numeric, hidden_dim, embedding_dim) if num_item_numeric else None

        user_parts = 1 + bool(user_category_sizes) + bool(num_user_numeric) + use_history
        item_parts = 1 + bool(item_category_sizes) + bool(num_item_numeric)
        self.user_mix = _Mix(user_parts, embedding_dim, hidden_dim)
        self.item_mix = _Mix(item_parts, embedding_dim, hidden_dim)

        self.item_id_bias = nn.Embedding(num_items, 1)
        nn.init.zeros_(self.item_id_bias.weight)
        self.item_numeric_bias = nn.Linear(num_item_numeric, 1) if num_item_numeric else None

    @classmethod
    def from_preprocessor(
        cls, preprocessor: Preprocessor, embedding_dim: int, hidden_dim: int, init_std: float
    ) -> TwoTowerModel:
        """A model whose embedding tables and inputs match a fitted preprocessor."""
        spec = preprocessor.spec
        return cls(
            num_users=preprocessor.num_users,
            num_items=preprocessor.num_items,
            user_category_sizes=preprocessor.category_sizes(spec.user_categorical),
            item_category_sizes=preprocessor.category_sizes(spec.item_categorical),
            num_user_numeric=len(spec.user_numeric),
            num_item_numeric=len(spec.item_numeric),
            use_history=spec.history is not None,
            embedding_dim=embedding_dim,
            hidden_dim=hidden_dim,
            init_std=init_std,
        )

    def user_vectors(self, users: dict[str, torch.Tensor]) -> torch.Tensor:
        """[n, embedding_dim] vectors for encoded users."""
        parts = [self.user_embedding(users["ids"])]
        if self.user_categorical is not None:
            parts.append(self.user_categorical(users["categorical"]))
        if self.user_numeric is not None:
            parts.append(self.user_numeric(users["numeric"]))
        if self.use_history:
            parts.append(self._history_mean(users["history"], users["history_mask"]))
        return self.user_mix(torch.cat(parts, dim=1))

    def item_vectors(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        """[n, embedding_dim] vectors for encoded items."""
        parts = [self.item_embedding(items["ids"])]
        if self.item_categorical is not None:
            parts.append(self.item_categorical(items["categorical"]))
        if self.item_numeric is not None:
            parts.append(self.item_numeric(items["numeric"]))
        return self.item_mix(torch.cat(parts, dim=1))

    def item_bias(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        """[n] additive logit term of each encoded item."""
        bias = self.item_id_bias(items["ids"]).squeeze(1)
        if self.item_numeric_bias is not None:
            bias = bias + self.item_numeric_bias(items["numeric"]).squeeze(1)
        return bias

    def forward(
        self, users: dict[str, torch.Tensor], items: dict[str, torch.Tensor], towers: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[n] click logits of row-aligned users and items.

        With ``towers=True``: the (user vectors, item vectors, item biases)
        the logits are made of, for objectives that score every user against
        every item of a batch. Going through ``forward`` rather than calling
        the tower methods directly is what lets DistributedDataParallel see
        the step and synchronise the gradients.
        """
        user_vectors, item_vectors, item_bias = self.user_vectors(users), self.item_vectors(items), self.item_bias(items)
        if towers:
            return user_vectors, item_vectors, item_bias
        return (user_vectors * item_vectors).sum(dim=1) + item_bias

    def _history_mean(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean item embedding over the known history items; zero for an empty history."""
        weights = mask.to(self.item_embedding.weight.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        return F.embedding_bag(history, self.item_embedding.weight, per_sample_weights=weights, mode="sum")
