"""The ranking stage: a DCN-v2 network that scores retrieval's candidates.

Retrieval (the two-tower model) must score the whole catalogue, so user and
item never meet before its final dot product. Ranking sees a few hundred
candidates per request and can afford a model where they do: every input field
meets every other one in the cross layers, and the cross features of
:mod:`recflow.ranking.features` relate the user's history to the candidate
explicitly.

Inputs of one (user, candidate) row, concatenated into ``x0``:

- the candidate's item-id embedding and the mean embedding of the user's
  recent history items (one shared table, as in the two-tower model);
- optionally a user-id embedding (off by default: see :class:`RankerConfig`);
- one embedding per categorical column (`user_*` and `item_*` strings),
  kept as separate fields rather than summed, so the cross layers can weigh
  each field pair on its own; an unknown value embeds to zero;
- the numeric `user_*` / `item_*` features, standardised by the fitted
  :class:`recflow.training.features.Preprocessor` (reused unchanged: the
  naming contract and encodings of the retrieval stage apply here too);
- the cross features and the retrieval score (``retrieval_score``),
  standardised with training statistics; NaN is imputed with the training mean.

Architecture: **parallel** DCN-v2 by default: the cross network
(``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``) and a ReLU MLP both read ``x0``
and the logit is a linear layer over their concatenated outputs. Why parallel:
the strongest ranking signals here are low order (the retrieval score, a
category match with the history), and the parallel form gives them a short,
nearly linear path to the logit through the cross branch, while the MLP adds
the implicit high-order terms; with few labelled impressions per item that
trains faster and more stably than forcing everything through the MLP, which
the stacked form does. ``structure="stacked"`` (MLP on top of the cross
output) is available for larger data, where DCN-v2's authors found the two
comparable.

Training is plain BCE on labelled rows (clicked impressions = 1, unclicked
impressions or sampled negatives = 0). :func:`train_ranker` is one process's
loop, written the way :mod:`recflow.training.train` is: each step takes the
next global batch of a seeded per-epoch permutation and rank r trains on its
contiguous slice, so N ranks under DDP make the update one process makes on
the whole batch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recflow.features.columns import Columns
from recflow.ranking.features import (
    CATEGORY_COLUMN,
    CROSS_FEATURES,
    HISTORY_COLUMN,
    ITEM_CREATED_COLUMN,
    LAST_CLICK_COLUMN,
    CategoryLookup,
    HistoryCategories,
    candidate_categories,
    combine_cross_features,
    epoch_seconds,
)
from recflow.training.features import (
    ALL_FEATURES,
    ITEM_ID,
    LABEL,
    TIMESTAMP,
    UNKNOWN_INDEX,
    USER_ID,
    FeatureSpec,
    Preprocessor,
    float_values,
)

logger = logging.getLogger("recflow.ranking")

RETRIEVAL_SCORE = "retrieval_score"
MODEL_FILE = "ranker.pt"
PREPROCESSOR_FILE = "preprocessor.json"
# Written last: its presence marks a complete save.
STATE_FILE = "ranker.json"

EMBEDDING_INIT_STD = 0.1


class RankerConfig(BaseModel):
    """Hyper-parameters of the ranking model; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")

    # Seeds initialisation and the per-epoch shuffle.
    seed: int = 42
    epochs: int = Field(default=5, ge=1)
    # GLOBAL batch (summed over ranks); must split evenly over the ranks.
    batch_size: int = Field(default=512, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    # Width of every embedding (ids, history, each categorical field).
    embedding_dim: int = Field(default=16, ge=1)
    # Number of DCN-v2 cross layers (0: a plain MLP).
    cross_layers: int = Field(default=3, ge=0)
    # Hidden widths of the deep MLP ([]: cross network only).
    deep_layers: list[Annotated[int, Field(ge=1)]] = [128, 64]
    # "parallel": cross and MLP side by side on x0; "stacked": MLP on the cross output.
    structure: Literal["parallel", "stacked"] = "parallel"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Most recent history items pooled (and used by the cross features).
    max_history: int = Field(default=20, ge=1)
    # A per-user embedding memorises heavy users and overfits the rest; the
    # user's features, history and retrieval score carry the user instead.
    use_user_id: bool = False
    # None: use `retrieval_score` when the training frame has it.
    use_retrieval_score: bool | None = None
    # Compute and feed :data:`recflow.ranking.features.CROSS_FEATURES`. They
    # compare the candidate's category with the user's history, so they are
    # left out with either of those columns (see `ignore_features`).
    use_cross_features: bool = True
    # Feature columns of the ranking set the ranker leaves out, as
    # TrainConfig.ignore_features does for retrieval (naming a column the set
    # lacks is an error).
    ignore_features: list[str] = []
    # The item_* string column the cross features compare with the history.
    category_column: str = CATEGORY_COLUMN
    # None: inferred from the training frame's user_*/item_* columns.
    feature_spec: FeatureSpec | None = None
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    log_every_steps: int = Field(default=100, ge=1)


class DCNv2(nn.Module):
    """The network; inputs are the tensors :meth:`Ranker.encode` produces."""

    offsets: torch.Tensor

    def __init__(
        self,
        *,
        num_users: int,
        num_items: int,
        category_sizes: list[int],
        num_numeric: int,
        use_history: bool,
        use_user_id: bool,
        embedding_dim: int,
        cross_layers: int,
        deep_layers: list[int],
        structure: str,
        dropout: float,
    ) -> None:
        super().__init__()
        d = embedding_dim
        self.use_history = use_history
        self.structure = structure
        self.item_embedding = nn.Embedding(num_items, d, padding_idx=UNKNOWN_INDEX)
        self.user_embedding = nn.Embedding(num_users, d, padding_idx=UNKNOWN_INDEX) if use_user_id else None
        self.num_fields = len(category_sizes)
        self.field_embedding = nn.Embedding(max(sum(category_sizes), 1), d)
        offsets = torch.tensor([0, *category_sizes[:-1]], dtype=torch.int64).cumsum(0) if category_sizes else None
        self.register_buffer("offsets", offsets if offsets is not None else torch.zeros(0, dtype=torch.int64), persistent=False)
        for table in (self.item_embedding, self.user_embedding, self.field_embedding):
            if table is not None:
                nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
        with torch.no_grad():
            self.item_embedding.weight[UNKNOWN_INDEX].zero_()
            if self.user_embedding is not None:
                self.user_embedding.weight[UNKNOWN_INDEX].zero_()

        input_dim = d * (1 + use_user_id + use_history + self.num_fields) + num_numeric
        self.input_dim = input_dim
        cross = [nn.Linear(input_dim, input_dim) for _ in range(cross_layers)]
        for layer in cross:
            # Small W: each cross layer starts close to the identity (x_{l+1} ~ x_l).
            nn.init.xavier_uniform_(layer.weight, gain=0.5)
            nn.init.zeros_(layer.bias)
        self.cross = nn.ModuleList(cross)
        deep: list[nn.Module] = []
        width = input_dim
        for hidden in deep_layers:
            deep += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout:
                deep.append(nn.Dropout(dropout))
            width = hidden
        self.deep = nn.Sequential(*deep)
        head_in = input_dim + width if structure == "parallel" and deep_layers else width
        self.head = nn.Linear(head_in, 1)

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """x0: [n, input_dim]."""
        parts = [self.item_embedding(inputs["item_ids"])]
        if self.user_embedding is not None:
            parts.append(self.user_embedding(inputs["user_ids"]))
        if self.use_history:
            weights = inputs["history_mask"].to(self.item_embedding.weight.dtype)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
            pooled = F.embedding_bag(inputs["history"], self.item_embedding.weight, per_sample_weights=weights, mode="sum")
            # Histories given once per user (a request's candidates): row i pools history history_rows[i].
            # index_select, not pooled[rows]: the same rows, a quarter of the time (0.03 against 0.11 ms for 800).
            parts.append(pooled.index_select(0, inputs["history_rows"]) if "history_rows" in inputs else pooled)
        if self.num_fields:
            categories = inputs["categorical"]
            known = (categories != UNKNOWN_INDEX).unsqueeze(2).to(self.field_embedding.weight.dtype)
            fields = self.field_embedding(categories + self.offsets) * known
            parts.append(fields.flatten(1))
        parts.append(inputs["numeric"])
        return torch.cat(parts, dim=1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[n] click logits."""
        x0 = self.embed(inputs)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        if self.structure == "stacked":
            out = self.deep(x)
        elif len(self.deep):
            out = torch.cat([x, self.deep(x0)], dim=1)
        else:
            out = x
        return self.head(out).squeeze(1)


class Ranker:
    """A trained ranking model with everything needed to score raw frames.

    ``score(frame)`` takes rows in the training set's layout (user and item
    feature columns from `ranking_v1`, the user's history, `retrieval_score`,
    and `event_timestamp` = request time online) for any number of users and
    candidates, and returns one click probability per row.
    ``score_candidates`` scores the same rows given as users x item snapshot
    (the recommender stack's requests), encoding each user and each snapshot
    item once rather than once per row; both encode through the same code.
    """

    def __init__(
        self,
        network: DCNv2,
        preprocessor: Preprocessor,
        config: RankerConfig,
        item_categories: CategoryLookup,
        extra_stats: dict[str, tuple[float, float]],
    ) -> None:
        self.network = network.eval()
        self.preprocessor = preprocessor
        self.config = config
        self.item_categories = item_categories
        # Standardisation of the non-Feast numeric inputs, in input order.
        self.extra_stats = extra_stats

    @property
    def extra_columns(self) -> list[str]:
        return list(self.extra_stats)

    @property
    def uses_retrieval_score(self) -> bool:
        return RETRIEVAL_SCORE in self.extra_stats

    def encode(self, frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        """The network's input tensors for every row of `frame`."""
        return _encode(frame, self.preprocessor, self.config, self.item_categories, self.extra_stats)

    def encode_columns(self, frame: pd.DataFrame) -> EncodedColumns:
        """The inputs of this ranker that `frame` holds, each encoded once per row of `frame`.

        What :meth:`score_candidates` gathers from: a stack encodes its item
        snapshot once with this, and every request reuses it.
        """
        return _encode_columns(frame, self.preprocessor, self.config, self.item_categories, list(self.extra_stats))

    @torch.inference_mode()
    def logits(self, frame: pd.DataFrame) -> np.ndarray:
        """float64 [len(frame)] click logits."""
        if not len(frame):
            return np.zeros(0)
        return self._logits(_RankingInputs([(self.encode_columns(frame), None)], len(frame)))

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """float64 [len(frame)] click probabilities, row-aligned with `frame`."""
        return torch.sigmoid(torch.from_numpy(self.logits(frame))).numpy()

    @torch.inference_mode()
    def score_candidates(
        self,
        rows: pd.DataFrame | Columns,
        users: pd.DataFrame | Columns | Sequence[pd.DataFrame | Columns],
        user_rows: np.ndarray,
        items: EncodedColumns,
        item_rows: np.ndarray,
    ) -> np.ndarray:
        """float64 click probabilities of rows pairing users with snapshot items.

        Row i is what :meth:`score` would score as row i of the frame joining
        user ``user_rows[i]`` of `users` (positions), item ``item_rows[i]`` of
        the snapshot that `items` encodes (:meth:`encode_columns`) and row i of
        `rows`: the columns of each row alone (`retrieval_score`,
        `event_timestamp`, on-demand features), which win over a user's or an
        item's column of the same name. `users` may be given as several
        row-aligned frames (a user's features and the outputs of transforms
        of them), an earlier frame's column winning over a later one's. The scores are those of :meth:`score`
        on that frame (tested), at a fraction of the cost: a request of 8 users
        x 200 candidates encodes 8 users, not 1600 rows, and no item at all.
        Encoding is row-wise, so gathering the encodings of distinct users and
        items gives exactly the encodings of the joined rows.
        """
        if not len(rows):
            return np.zeros(0)
        user_frames = [users] if isinstance(users, (pd.DataFrame, Columns)) else users
        parts = [
            (self.encode_columns(rows), None),
            *((self.encode_columns(frame), user_rows) for frame in user_frames),
            (items, item_rows),
        ]
        return torch.sigmoid(torch.from_numpy(self._logits(_RankingInputs(parts, len(rows))))).numpy()

    def _logits(self, inputs: _RankingInputs) -> np.ndarray:
        tensors = _network_inputs(inputs, self.preprocessor, self.config, self.extra_stats)
        return self.network(tensors).double().numpy()

    def save(self, directory: str | Path) -> None:
        """Weights, preprocessor and state into `directory`; `ranker.json` is written last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).unlink(missing_ok=True)  # an interrupted save must not look complete
        torch.save(self.network.state_dict(), directory / MODEL_FILE)
        self.preprocessor.save(directory / PREPROCESSOR_FILE)
        state = {
            "config": self.config.model_dump(mode="json"),
            "architecture": _architecture(self.preprocessor, self.config, len(self.extra_stats)),
            "extra_stats": {name: list(stats) for name, stats in self.extra_stats.items()},
            "item_categories": self.item_categories.to_dict(),
        }
        tmp = directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, directory / STATE_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> Ranker:
        directory = Path(directory)
        if not (directory / STATE_FILE).exists():
            raise FileNotFoundError(f"{directory} holds no complete ranker ({STATE_FILE} missing)")
        state = json.loads((directory / STATE_FILE).read_text())
        config = RankerConfig.model_validate(state["config"])
        network = DCNv2(**state["architecture"])
        network.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
        return cls(
            network=network,
            preprocessor=Preprocessor.load(directory / PREPROCESSOR_FILE),
            config=config,
            item_categories=CategoryLookup.from_dict(state["item_categories"]),
            extra_stats={name: (mean, std) for name, (mean, std) in state["extra_stats"].items()},
        )


def _architecture(preprocessor: Preprocessor, config: RankerConfig, num_extra: int) -> dict:
    spec = preprocessor.spec
    return {
        "num_users": preprocessor.num_users,
        "num_items": preprocessor.num_items,
        "category_sizes": preprocessor.category_sizes(spec.user_categorical + spec.item_categorical),
        "num_numeric": len(spec.user_numeric) + len(spec.item_numeric) + num_extra,
        "use_history": spec.history is not None,
        "use_user_id": config.use_user_id,
        "embedding_dim": config.embedding_dim,
        "cross_layers": config.cross_layers,
        "deep_layers": list(config.deep_layers),
        "structure": config.structure,
        "dropout": config.dropout,
    }


# --------------------------------------------------------------------------- encoding
#
# Encoding goes in two steps, so that the rows a ranker scores can be given
# whole (a training frame) or by parts (users x an item snapshot, a request):
# 1. _encode_columns encodes every input one frame holds, one entry per row
#    of that frame (feature columns, the parts of the cross features, the
#    retrieval score);
# 2. _network_inputs assembles the network's tensors for the scored rows,
#    reading each input from the first part that holds it, gathered by the
#    part's row index.
# A whole frame is one part with no gather, so both paths share every line.

# Any: the values are arrays, (array, array) pairs or HistoryCategories.
EncodedColumns = dict[str, Any]

# Keys of encoded inputs that are not a single feature column.
_CANDIDATE_CATEGORY = "cross: candidate category"
_HISTORY_CATEGORIES = "cross: history categories"


def _seconds(column: str) -> str:
    return f"cross: seconds of {column}"


def _cross_history_column(config: RankerConfig) -> str:
    history = config.feature_spec.history if config.feature_spec else None
    return history or HISTORY_COLUMN


def _encode_columns(
    frame: pd.DataFrame,
    preprocessor: Preprocessor,
    config: RankerConfig,
    lookup: CategoryLookup,
    extra_names: list[str],
) -> EncodedColumns:
    """Every input of the ranker `frame` holds, encoded row by row (see the comment above)."""
    spec = preprocessor.spec
    present = set(frame.columns)
    encoded: EncodedColumns = {}
    for id_column in (USER_ID, ITEM_ID):
        if id_column in present:
            encoded[id_column] = preprocessor.encode_ids(frame[id_column], id_column)
    categorical = [name for name in spec.user_categorical + spec.item_categorical if name in present]
    encoded.update(zip(categorical, preprocessor.encode_categorical(frame, categorical).T))
    numeric = [name for name in spec.user_numeric + spec.item_numeric if name in present]
    encoded.update(zip(numeric, preprocessor.encode_numeric(frame, numeric).T))
    if spec.history and spec.history in present:
        encoded[spec.history] = preprocessor.encode_history(frame[spec.history])
    encoded.update(_encode_extra_columns(frame, config, lookup, extra_names))
    return encoded


def _encode_extra_columns(
    frame: pd.DataFrame, config: RankerConfig, lookup: CategoryLookup, names: list[str]
) -> EncodedColumns:
    """The parts of the cross features and the retrieval score (those of `names`) that `frame` holds."""
    present = set(frame.columns)
    encoded: EncodedColumns = {}
    if any(name in CROSS_FEATURES for name in names):
        candidate = candidate_categories(frame, lookup, config.category_column)
        if candidate is not None:
            encoded[_CANDIDATE_CATEGORY] = candidate
        history = _cross_history_column(config)
        if history in present:
            encoded[_HISTORY_CATEGORIES] = HistoryCategories.of(frame[history], lookup)
        for column in (TIMESTAMP, ITEM_CREATED_COLUMN, LAST_CLICK_COLUMN):
            if column in present:
                encoded[_seconds(column)] = epoch_seconds(frame[column])
    if RETRIEVAL_SCORE in names and RETRIEVAL_SCORE in present:
        encoded[RETRIEVAL_SCORE] = float_values(frame[RETRIEVAL_SCORE])
    return encoded


class _RankingInputs:
    """The encoded inputs of the rows being scored, given by parts.

    ``parts``: (encoded columns, rows) pairs; row i of the scored rows is row
    ``rows[i]`` of a part (``None``: row i). An input is read from the first
    part that holds it.
    """

    def __init__(self, parts: list[tuple[EncodedColumns, np.ndarray | None]], rows: int) -> None:
        self.rows = rows
        # key -> (encoded input of every row of its part, the part's rows); earlier parts win.
        self.found: dict[str, tuple[Any, np.ndarray | None]] = {}
        for encoded, part_rows in reversed(parts):
            self.found.update((key, (value, part_rows)) for key, value in encoded.items())

    def __contains__(self, key: str) -> bool:
        return key in self.found

    def with_rows(self, key: str) -> tuple[Any, np.ndarray | None] | None:
        """(the encoded input of every row of its part, the part's rows), or None if no part holds it."""
        return self.found.get(key)

    def get(self, key: str) -> Any:
        """The input of every scored row (a gathered array, or a tuple of them); None if no part holds it."""
        if key not in self.found:
            return None
        value, rows = self.found[key]
        if rows is None:
            return value
        return tuple(v[rows] for v in value) if isinstance(value, tuple) else value[rows]


def _extra_values(inputs: _RankingInputs, config: RankerConfig, names: list[str]) -> dict[str, np.ndarray]:
    """Raw (unstandardised) values of the cross features and retrieval score named in `names`."""
    values: dict[str, np.ndarray] = {}
    n = inputs.rows
    if any(name in CROSS_FEATURES for name in names):
        candidate = inputs.get(_CANDIDATE_CATEGORY)
        codes, null = candidate if candidate is not None else (np.full(n, -1), np.ones(n, dtype=bool))
        history, history_rows = inputs.with_rows(_HISTORY_CATEGORIES) or (None, None)
        values.update(
            combine_cross_features(
                codes,
                null,
                history,
                history_rows=history_rows,
                now=inputs.get(_seconds(TIMESTAMP)),
                item_created=inputs.get(_seconds(ITEM_CREATED_COLUMN)),
                last_click=inputs.get(_seconds(LAST_CLICK_COLUMN)),
                max_history=config.max_history,
            )
        )
    if RETRIEVAL_SCORE in names:
        if RETRIEVAL_SCORE not in inputs:
            raise ValueError(f"the ranker was trained with {RETRIEVAL_SCORE!r}; the frame has no such column")
        values[RETRIEVAL_SCORE] = inputs.get(RETRIEVAL_SCORE)
    return values


def _network_inputs(
    inputs: _RankingInputs,
    preprocessor: Preprocessor,
    config: RankerConfig,
    extra_stats: dict[str, tuple[float, float]],
) -> dict[str, torch.Tensor]:
    """The network's input tensors for the scored rows (layout: :class:`DCNv2`)."""
    spec = preprocessor.spec
    for tower, columns in (("user", spec.user_columns()), ("item", spec.item_columns())):
        missing = [name for name in columns if name not in inputs]
        if missing:
            raise ValueError(f"{tower} frame is missing feature columns {missing}")
    n = inputs.rows
    categorical_names = spec.user_categorical + spec.item_categorical
    categorical = np.empty((n, len(categorical_names)), dtype=np.int64)
    for j, name in enumerate(categorical_names):
        categorical[:, j] = inputs.get(name)
    numeric_names = spec.user_numeric + spec.item_numeric
    numeric = np.empty((n, len(numeric_names) + len(extra_stats)), dtype=np.float32)
    for j, name in enumerate(numeric_names):
        numeric[:, j] = inputs.get(name)
    if extra_stats:
        extra = _extra_values(inputs, config, list(extra_stats))
        raw = np.stack([extra[name] for name in extra_stats], axis=1)
        stats = np.array(list(extra_stats.values()), dtype=np.float64)
        standardised = (raw - stats[:, 0]) / stats[:, 1]
        standardised[np.isnan(standardised)] = 0.0  # NaN -> the training mean
        numeric[:, len(numeric_names) :] = standardised.astype(np.float32)
    encoded = {
        "user_ids": torch.from_numpy(inputs.get(USER_ID)),
        "item_ids": torch.from_numpy(inputs.get(ITEM_ID)),
        "categorical": torch.from_numpy(categorical),
        "numeric": torch.from_numpy(numeric),
    }
    if spec.history:
        # Each part's own rows: pooled once per user, not once per candidate (DCNv2.embed gathers).
        (history, mask), rows = inputs.with_rows(spec.history)
        encoded["history"], encoded["history_mask"] = torch.from_numpy(history), torch.from_numpy(mask)
        if rows is not None:
            encoded["history_rows"] = torch.from_numpy(rows)
    return encoded


def _encode(
    frame: pd.DataFrame,
    preprocessor: Preprocessor,
    config: RankerConfig,
    lookup: CategoryLookup,
    extra_stats: dict[str, tuple[float, float]],
) -> dict[str, torch.Tensor]:
    """The network's input tensors for every row of `frame`."""
    encoded = _encode_columns(frame, preprocessor, config, lookup, list(extra_stats))
    return _network_inputs(_RankingInputs([(encoded, None)], len(frame)), preprocessor, config, extra_stats)


# --------------------------------------------------------------------------- metrics


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula with average ranks for ties.

    Equals the probability that a random positive outscores a random negative,
    counting a tie as one half. NaN when only one class is present.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal-length 1-D arrays")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    positive = labels.astype(np.float64)
    if not np.isin(positive, (0.0, 1.0)).all():
        raise ValueError("labels must be binary (0/1 or bool)")
    positive = positive.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    # Positions start..end-1 hold ranks start+1..end: their mean is shared by the tie group.
    group_ranks = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(group_ranks, ends - starts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1.0 - eps)
    return float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean())


def _log_loss_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean BCE computed from logits: exact where probabilities would saturate."""
    y = np.asarray(labels, dtype=np.float64)
    return float((np.logaddexp(0.0, logits) - y * logits).mean())


def evaluate_ranker(model: Ranker, frame: pd.DataFrame) -> dict[str, float]:
    """{"auc", "log_loss"} of the ranker on labelled rows (column `label`)."""
    labels = _labels(frame)
    logits = model.logits(frame)
    return {"auc": auc(labels, logits), "log_loss": _log_loss_from_logits(labels, logits)}


def _labels(frame: pd.DataFrame) -> np.ndarray:
    if LABEL not in frame.columns:
        raise ValueError(f"the frame has no {LABEL!r} column")
    labels = float_values(frame[LABEL])
    if np.isnan(labels).any():
        raise ValueError(f"column {LABEL!r} has nulls")
    return labels


# --------------------------------------------------------------------------- training


def _uses_cross_features(config: RankerConfig) -> bool:
    """Whether the cross features are fed: asked for, and both of their inputs are features."""
    spec = config.feature_spec
    return (
        config.use_cross_features
        and spec is not None
        and spec.history is not None
        and not {config.category_column, ALL_FEATURES} & set(config.ignore_features)
    )


def _fit_extra_stats(
    frame: pd.DataFrame, config: RankerConfig, lookup: CategoryLookup
) -> dict[str, tuple[float, float]]:
    use_score = config.use_retrieval_score
    if use_score is None:
        use_score = RETRIEVAL_SCORE in frame.columns
    names = [*CROSS_FEATURES] if _uses_cross_features(config) else []
    if use_score:
        names.append(RETRIEVAL_SCORE)
    inputs = _RankingInputs([(_encode_extra_columns(frame, config, lookup, names), None)], len(frame))
    values = _extra_values(inputs, config, names)
    stats = {}
    for name in names:
        known = values[name][~np.isnan(values[name])]
        mean = float(known.mean()) if len(known) else 0.0
        std = float(known.std()) if len(known) else 0.0
        stats[name] = (mean, std if std > 1e-12 else 1.0)
    return stats


def train_ranker(
    frame: pd.DataFrame,
    config: RankerConfig | None = None,
    *,
    validation: pd.DataFrame | None = None,
    item_categories: dict[str, str] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Ranker, Preprocessor, dict]:
    """Train the ranker on labelled rows; returns (ranker, its preprocessor, metrics).

    `frame` follows the training-set layout (user_*/item_* columns, `label`,
    optionally `retrieval_score` and `event_timestamp`). `item_categories`
    adds catalogue entries to the lookup the cross features use (by default
    the (item_id, category) pairs of `frame`). With `world_size` > 1 the
    caller has initialised torch.distributed: every rank calls this with the
    same frame and trains on its slice of each global batch, under DDP.
    Metrics: per-epoch mean loss, throughput, and AUC / log loss on the
    training frame and on `validation` when given.
    """
    config = config or RankerConfig()
    if config.batch_size % world_size:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by world_size={world_size}")
    if world_size > 1 and not (dist.is_initialized() and dist.get_world_size() == world_size):
        raise RuntimeError(f"world_size={world_size} needs an initialised process group of that size")
    started = time.perf_counter()
    # retrieval_score and cross_* are outside the user_*/item_* contract: infer ignores them.
    spec = config.feature_spec or FeatureSpec.infer(frame)
    if config.ignore_features:
        spec = spec.without(config.ignore_features)
    config = config.model_copy(update={"feature_spec": spec})
    preprocessor = Preprocessor.fit(frame, spec, config.max_history)
    lookup = CategoryLookup({})
    if config.category_column in frame.columns:
        lookup = CategoryLookup.from_frame(frame, category_column=config.category_column)
    if item_categories:
        lookup = lookup.merged(item_categories)
    extra_stats = _fit_extra_stats(frame, config, lookup)

    device = _device(config.device, rank)
    inputs = {k: v.to(device) for k, v in _encode(frame, preprocessor, config, lookup, extra_stats).items()}
    labels = torch.from_numpy(_labels(frame).astype(np.float32)).to(device)
    rows = len(frame)
    steps_per_epoch = rows // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{rows} rows is fewer than one global batch ({config.batch_size}); lower batch_size")
    local_batch = config.batch_size // world_size

    threads = torch.get_num_threads()
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # small ops: threads cost more than they give (see training.train)
    try:
        torch.manual_seed(config.seed)
        network = DCNv2(**_architecture(preprocessor, config, len(extra_stats))).to(device)
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        trained: nn.Module = network
        if world_size > 1:
            trained = DistributedDataParallel(
                network, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
        network.train()
        epoch_losses = []
        loop_started = time.perf_counter()
        for epoch in range(config.epochs):
            order = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(rows)).to(device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for step in range(steps_per_epoch):
                start = step * config.batch_size + rank * local_batch
                batch = order[start : start + local_batch]
                logits = trained({k: v.index_select(0, batch) for k, v in inputs.items()})
                loss = F.binary_cross_entropy_with_logits(logits, labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                detached = loss.detach()
                if world_size > 1:
                    dist.all_reduce(detached)
                    detached = detached / world_size
                loss_sum += detached.double()
            epoch_losses.append(loss_sum.item() / steps_per_epoch)
            if rank == 0:
                logger.info("ranker epoch %d/%d: mean loss %.4f", epoch + 1, config.epochs, epoch_losses[-1])
        loop_seconds = time.perf_counter() - loop_started
    finally:
        torch.set_num_threads(threads)

    ranker = Ranker(network.cpu(), preprocessor, config, lookup, extra_stats)
    metrics: dict = {
        "epoch_losses": epoch_losses,
        "rows": rows,
        "steps": steps_per_epoch * config.epochs,
        "world_size": world_size,
        "samples_per_second": steps_per_epoch * config.epochs * config.batch_size / loop_seconds,
        "wall_seconds": time.perf_counter() - started,
        "inputs": ranker.network.input_dim,
        "extra_features": list(extra_stats),
        "train": evaluate_ranker(ranker, frame),
    }
    if validation is not None:
        metrics["validation"] = evaluate_ranker(ranker, validation)
    return ranker, preprocessor, metrics


def _device(requested: str, rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but CUDA is not available")
    index = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
    return torch.device("cuda", index)
