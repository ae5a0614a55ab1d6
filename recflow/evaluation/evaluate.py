"""Score a recommender on a split: the offline evaluation every training run ends with.

For each evaluated user the recommender is asked for k items while the items
the user already clicked in train are excluded (recommending something the
user has just consumed is not a useful recommendation, and the benchmark table
we compare with removes them too). The relevant set is the user's test
positives minus those excluded items: a re-click of an already seen item can
never be recommended, so counting it would only lower every recommender's
recall by the same unreachable amount. Users left with no relevant item are
skipped and counted in ``skipped_users``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from recflow.evaluation.metrics import Relevance, ndcg_curve, per_user_metrics, ranking_metrics
from recflow.evaluation.protocols import Split
from recflow.evaluation.recommenders import Recommender


@dataclass(frozen=True)
class EvaluationResult:
    """The outcome of :func:`evaluate_recommender`.

    ``metrics`` holds the means (keys of :func:`ranking_metrics`);
    ``per_user[name][i]`` is user ``user_ids[i]``'s value of the mean metric
    ``name`` (``map`` holding the user's average precision).
    """

    name: str
    k: int
    metrics: dict[str, float]
    ndcg_curve: dict[int, float]
    user_ids: list[str]
    per_user: dict[str, np.ndarray]
    skipped_users: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON-friendly part (no per-user arrays)."""
        return {
            "name": self.name,
            "k": self.k,
            "metrics": dict(self.metrics),
            "ndcg_curve": {str(k): v for k, v in self.ndcg_curve.items()},
            "skipped_users": self.skipped_users,
        }


def _seen_positives(train: pd.DataFrame) -> pd.DataFrame:
    positives = train.loc[train["clicked"].astype(bool), ["user_id", "item_id"]]
    return positives.drop_duplicates()


def evaluate_recommender(
    recommender: Recommender,
    split: Split,
    k: int = 10,
    *,
    catalog: Sequence[str],
    max_users: int | None = None,
    seed: int = 0,
) -> EvaluationResult:
    """Score ``recommender`` on ``split.test`` at cutoff k over the items of ``catalog``.

    ``max_users`` scores a random subset of the test users (drawn with
    ``seed``, so that every recommender of a run is scored on the same users).
    Raises ``ValueError`` if the recommender breaks its contract: more than k
    items, an item outside the catalog, or an excluded item.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be >= 1, got {max_users}")
    catalog = list(catalog)
    item_index = {item: i for i, item in enumerate(catalog)}
    if len(item_index) != len(catalog):
        raise ValueError("catalog contains duplicate item ids")

    seen = _seen_positives(split.train)
    test_pairs = split.test.loc[split.test["clicked"].astype(bool), ["user_id", "item_id"]].drop_duplicates()
    merged = test_pairs.merge(seen, on=["user_id", "item_id"], how="left", indicator=True)
    relevant_pairs = merged.loc[merged["_merge"] == "left_only", ["user_id", "item_id"]]
    users = np.sort(relevant_pairs["user_id"].unique())
    skipped = test_pairs["user_id"].nunique() - len(users)
    if len(users) == 0:
        raise ValueError("no test user has a positive item that is not already seen in train")
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    user_ids = users.tolist()

    # Relevant items outside the catalog still count (they cannot be found, which
    # is a real miss), so they get indices past the catalog's end.
    relevant_pairs = relevant_pairs[relevant_pairs["user_id"].isin(users)]
    item_codes = relevant_pairs["item_id"].map(item_index)
    unknown = item_codes.isna()
    item_codes[unknown] = len(catalog) + pd.factorize(relevant_pairs.loc[unknown, "item_id"])[0]
    user_rows = np.searchsorted(users, relevant_pairs["user_id"].to_numpy())
    order = np.argsort(user_rows, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(user_rows, minlength=len(users)))])
    relevant = Relevance.from_csr(indptr, item_codes.to_numpy(dtype=np.int64)[order])

    seen = seen[seen["user_id"].isin(users)]
    exclude = {user: set(items) for user, items in seen.groupby("user_id")["item_id"]}
    recommendations = recommender.recommend(user_ids, k, exclude)
    if len(recommendations) != len(user_ids):
        raise ValueError(f"{recommender.name} returned {len(recommendations)} lists for {len(user_ids)} users")
    recommended = np.full((len(user_ids), k), -1, dtype=np.int64)
    for row, (user, items) in enumerate(zip(user_ids, recommendations)):
        if len(items) > k:
            raise ValueError(f"{recommender.name} returned {len(items)} items for user {user!r}, more than k={k}")
        for col, item in enumerate(items):
            if item not in item_index:
                raise ValueError(f"{recommender.name} recommended {item!r}, which is not in the catalog")
            if item in exclude.get(user, ()):
                raise ValueError(f"{recommender.name} recommended the excluded item {item!r} to user {user!r}")
            recommended[row, col] = item_index[item]

    curve = ndcg_curve(recommended, relevant, range(1, k + 1))
    return EvaluationResult(
        name=recommender.name,
        k=k,
        metrics=ranking_metrics(recommended, relevant, k, len(catalog)),
        ndcg_curve={i + 1: float(v) for i, v in enumerate(curve)},
        user_ids=user_ids,
        per_user=per_user_metrics(recommended, relevant, k),
        skipped_users=int(skipped),
    )


def compare(results: dict[str, EvaluationResult]) -> pd.DataFrame:
    """One row per recommender, one column per metric, for tables and logs."""
    table = pd.DataFrame.from_dict({name: r.metrics for name, r in results.items()}, orient="index")
    table.index.name = "recommender"
    return table
