"""The recommender interface the evaluation scores, and the reference recommenders.

Every evaluated run scores three recommenders side by side: the trained model,
:class:`PopularityRecommender` (the floor a model must beat to be worth
serving) and, on synthetic worlds, :class:`OracleRecommender` (the ceiling: it
ranks by the world's true click affinity, so no model can beat it on average).
:class:`EaseRecommender`, a strong published item-item model, gives the
quality benchmark a reference point on real data, where there is no oracle.
"""

from __future__ import annotations

from typing import Collection, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd


class Recommender(Protocol):
    """Anything that turns users into ranked item ids.

    ``recommend`` returns, per user, at most k item ids, best first, and never
    an item in ``exclude[user]`` (the items the user already interacted with).
    """

    name: str

    def recommend(
        self, user_ids: Sequence[str], k: int, exclude: Mapping[str, Collection[str]]
    ) -> list[list[str]]: ...


def top_k_from_scores(scores: np.ndarray, k: int, exclude_mask: np.ndarray | None = None) -> np.ndarray:
    """Column indices of the k best scores per row, best first, ``-1`` where none is left.

    ``argpartition`` selects the top k in linear time and only those k are
    sorted, which matters for catalogs of tens of thousands of items. Tied
    scores inside the top k are ordered by column index (which of several items
    tied at the k-th place gets in is up to ``argpartition``, deterministic for
    a given input). Excluded cells are never returned: rows with fewer than k
    allowed items are padded with ``-1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [n_users, n_items], got shape {scores.shape}")
    n_users, n_items = scores.shape
    if n_items == 0:
        return np.full((n_users, k), -1, dtype=np.int64)
    allowed = np.ones(scores.shape, dtype=bool) if exclude_mask is None else ~np.asarray(exclude_mask, dtype=bool)
    if allowed.shape != scores.shape:
        raise ValueError(f"exclude_mask has shape {allowed.shape}, scores have {scores.shape}")
    masked = np.where(allowed, scores, -np.inf)
    kk = min(k, n_items)
    top = np.argpartition(-masked, kk - 1, axis=1)[:, :kk]
    top_scores = np.take_along_axis(masked, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    top = np.where(np.take_along_axis(allowed, top, axis=1), top, -1)
    if kk < k:
        top = np.pad(top, ((0, 0), (0, k - kk)), constant_values=-1)
    return top.astype(np.int64)


def exclusion_mask(
    user_ids: Sequence[str], exclude: Mapping[str, Collection[str]], item_index: Mapping[str, int]
) -> np.ndarray:
    """Boolean ``[len(user_ids), len(item_index)]`` mask of each user's excluded items.

    Excluded ids outside the catalog are ignored: they cannot be recommended anyway.
    """
    mask = np.zeros((len(user_ids), len(item_index)), dtype=bool)
    for row, user in enumerate(user_ids):
        columns = [item_index[item] for item in exclude.get(user, ()) if item in item_index]
        mask[row, columns] = True
    return mask


class PopularityRecommender:
    """Recommends the most clicked items in train that the user has not seen yet.

    Popularity is the number of positive (clicked) events, so impressions that
    were ignored do not make an item look popular. Ties go to the smaller item
    id, making the ranking, and so the baseline metrics, deterministic.
    """

    name = "popularity"

    def __init__(self) -> None:
        self.ranking: list[str] = []

    def fit(self, train: pd.DataFrame, catalog: Sequence[str] | None = None) -> PopularityRecommender:
        """Rank ``catalog`` (default: every item in train) by clicks in train."""
        clicks = train.loc[train["clicked"].astype(bool), "item_id"].value_counts()
        items = pd.Index(pd.unique(pd.Series(catalog if catalog is not None else train["item_id"], dtype=object)))
        table = pd.DataFrame({"item_id": items, "clicks": clicks.reindex(items, fill_value=0).to_numpy()})
        table = table.sort_values(["clicks", "item_id"], ascending=[False, True], kind="stable")
        self.ranking = table["item_id"].tolist()
        return self

    def recommend(
        self, user_ids: Sequence[str], k: int, exclude: Mapping[str, Collection[str]]
    ) -> list[list[str]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        result = []
        for user in user_ids:
            seen = set(exclude.get(user, ()))
            # At most len(seen) of the first k + len(seen) items can be excluded.
            head = self.ranking[: k + len(seen)]
            result.append([item for item in head if item not in seen][:k])
        return result


class OracleRecommender:
    """Ranks the catalog by the synthetic world's true affinity on a given day.

    ``ground_truth`` only needs ``affinity(user_ids, item_ids, day) -> [users, items]``
    (higher = more likely clicked). Users are scored ``chunk_size`` at a time so
    that the score matrix stays at ``chunk_size x len(catalog)`` floats.
    """

    name = "oracle"

    def __init__(self, ground_truth, day: int, catalog: Sequence[str], chunk_size: int = 1024) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.ground_truth = ground_truth
        self.day = day
        self.catalog = list(catalog)
        self.item_index = {item: i for i, item in enumerate(self.catalog)}
        self.chunk_size = chunk_size

    def recommend(
        self, user_ids: Sequence[str], k: int, exclude: Mapping[str, Collection[str]]
    ) -> list[list[str]]:
        user_ids = list(user_ids)
        result: list[list[str]] = []
        for start in range(0, len(user_ids), self.chunk_size):
            chunk = user_ids[start : start + self.chunk_size]
            scores = np.asarray(self.ground_truth.affinity(chunk, self.catalog, self.day))
            if scores.shape != (len(chunk), len(self.catalog)):
                raise ValueError(
                    f"affinity returned shape {scores.shape}, expected {(len(chunk), len(self.catalog))}"
                )
            top = top_k_from_scores(scores, k, exclusion_mask(chunk, exclude, self.item_index))
            result.extend([self.catalog[i] for i in row if i >= 0] for row in top)
        return result


class ModelRecommender:
    """A trained two-tower model scoring every catalogue item for each user.

    ``users`` and ``items`` hold the feature values the model sees (indexed by
    id), read from the same feature service training used, as of the instant
    the recommendations are for. Users are scored in chunks to bound memory.
    """

    def __init__(self, model, users: pd.DataFrame, items: pd.DataFrame, name: str = "model", chunk_size: int = 2048):
        self.name = name
        self.model = model
        self.users = users.set_index("user_id", drop=False)
        self.item_ids = items["item_id"].astype(str).tolist()
        self.item_index = {item: position for position, item in enumerate(self.item_ids)}
        self.item_vectors, self.item_bias = model.item_vectors(items)
        self.chunk_size = chunk_size

    def recommend(self, user_ids: Sequence[str], k: int, exclude: Mapping[str, Collection[str]]) -> list[list[str]]:
        result: list[list[str]] = []
        for start in range(0, len(user_ids), self.chunk_size):
            chunk = list(user_ids[start : start + self.chunk_size])
            vectors = self.model.user_vectors(self.users.loc[chunk].reset_index(drop=True))
            scores = vectors @ self.item_vectors.T + self.item_bias
            top = top_k_from_scores(scores, k, exclusion_mask(chunk, exclude, self.item_index))
            result.extend([self.item_ids[j] for j in row if j >= 0] for row in top)
        return result


class EaseRecommender:
    """EASE (Steck, WWW 2019): a closed-form item-item model, for benchmarks only.

    Scores are ``X @ B`` where X is the binary user x item matrix of train
    clicks and B minimises ``|X - XB|^2 + l2 |B|^2`` with a zero diagonal:
    ``P = (X'X + l2 I)^-1``, ``B = -P / diag(P)``. It is among the strongest
    models on the public top-k tables, which makes it a fair yardstick of
    what a split allows. It inverts an items x items matrix (cubic time,
    quadratic memory), so it refuses catalogues above ``max_items``; it cannot
    be served from features and is never part of the stack.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, max_items: int = 20_000) -> None:
        self.l2 = l2
        self.max_items = max_items

    def fit(self, train: pd.DataFrame, catalog: Sequence[str]) -> EaseRecommender:
        """Fit on the clicks of ``train``; recommendations come from ``catalog``."""
        items = pd.Index(pd.unique(pd.Series(catalog, dtype=object)))
        if len(items) > self.max_items:
            raise ValueError(f"EASE inverts an items x items matrix: {len(items)} items is above max_items={self.max_items}")
        clicks = train.loc[train["clicked"].astype(bool), ["user_id", "item_id"]].drop_duplicates()
        clicks = clicks[clicks["item_id"].isin(items)]
        self.users = pd.Index(pd.unique(clicks["user_id"]))
        self.items = items
        matrix = np.zeros((len(self.users), len(items)), dtype=np.float32)
        matrix[self.users.get_indexer(clicks["user_id"]), items.get_indexer(clicks["item_id"])] = 1.0
        gram = matrix.T @ matrix
        gram[np.diag_indices_from(gram)] += self.l2
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)
        np.fill_diagonal(weights, 0.0)
        self.scores = matrix @ weights
        return self

    def recommend(
        self, user_ids: Sequence[str], k: int, exclude: Mapping[str, Collection[str]]
    ) -> list[list[str]]:
        rows = self.users.get_indexer(list(user_ids))
        # A user without train clicks scores zero everywhere: ties, broken by item order.
        scores = np.where(rows[:, None] >= 0, self.scores[np.maximum(rows, 0)], 0.0)
        item_index = {item: column for column, item in enumerate(self.items)}
        top = top_k_from_scores(scores, k, exclusion_mask(user_ids, exclude, item_index))
        return [[self.items[column] for column in row if column >= 0] for row in top]
