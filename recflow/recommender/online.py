"""The recommender behind an online request: a bundle's stack plus the decisions serving adds.

Serving (``serving/``, the KServe model server) parses requests, groups
concurrent ones into batches and reads user features with a deadline; every
decision about *what* to answer is here, in the library, so the local server,
the cluster's InferenceService and the tests share it:

- known users get the bundle's :class:`RecommenderStack`, the one the offline
  evaluation scored, with the items they clicked recently (their history
  feature) and the ones the request names excluded;
- users the online store has never seen get the cold-start answer, the
  items most clicked over the last 7 days of the snapshot (``unknown_user``);
- a feature store that fails or misses its deadline gets the same popular
  items for the whole batch (``feature_store_unavailable`` /
  ``feature_store_timeout``);
- inside the stack, a failing ANN index degrades to exact search and a
  failing ranker to the retrieval order (``ann_failure`` / ``ranker_failure``).

Each answer names its fallback (``None`` when the full stack answered).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recflow.features.columns import Columns
from recflow.features.online import HISTORY_COLUMN, UserFeatures
from recflow.recommender.stack import RecommenderStack, StageTrace, load_config

MODEL_CARD = "model_card.json"
ITEM_SNAPSHOT = "item_features.parquet"


@dataclass(frozen=True)
class Query:
    user_id: str
    k: int
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    user_id: str
    items: list[tuple[str, float]]
    fallback: str | None


@dataclass
class BatchTrace:
    """What a batch cost per stage (seconds) and which fallbacks it took, for the metrics."""

    seconds: dict[str, float] = field(default_factory=dict)
    # Fallback reason -> users answered by it.
    fallbacks: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str, users: int) -> None:
        if users:
            self.fallbacks[reason] = self.fallbacks.get(reason, 0) + users


class PopularItems:
    """The cold-start and fallback ranking: most clicked items of the snapshot's last 7 days.

    Ties are broken by 28-day clicks, then by item id, so the list is
    deterministic. The score is the item's share of the 7-day clicks.
    """

    def __init__(self, items: pd.DataFrame) -> None:
        for column in ("item_clicks_7d", "item_clicks_28d"):
            if column not in items.columns:
                raise ValueError(f"the item snapshot has no {column!r} column to rank popular items by")
        ordered = items.assign(item_id=items["item_id"].astype(str)).sort_values(
            ["item_clicks_7d", "item_clicks_28d", "item_id"], ascending=[False, False, True], kind="stable"
        )
        clicks = ordered["item_clicks_7d"].to_numpy(dtype=np.float64)
        total = clicks.sum()
        self.item_ids: list[str] = ordered["item_id"].tolist()
        self.scores: list[float] = (clicks / total if total > 0 else np.zeros(len(clicks))).tolist()

    def top(self, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for item, score in zip(self.item_ids, self.scores):
            if item not in exclude:
                out.append((item, score))
                if len(out) == k:
                    break
        return out


@dataclass(frozen=True)
class Bundle:
    """A loaded model bundle: the stack, its card and the fallback ranking."""

    path: Path
    stack: RecommenderStack
    card: dict
    popular: PopularItems

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def feature_service(self) -> str:
        return str(self.card["feature_service"])


def load_bundle(path: str | Path, transforms_for: Callable[[str], list]) -> Bundle:
    """Load what ``export_bundle`` wrote; ``transforms_for(service)`` gives the on-demand transforms.

    The index is the one exported with the bundle (not rebuilt), so serving
    searches exactly what the evaluation searched.
    """
    from recflow.ranking.model import Ranker
    from recflow.retrieval.index import ItemIndex
    from recflow.training.inference import TrainedModel

    path = Path(path)
    if not (path / MODEL_CARD).is_file():
        raise FileNotFoundError(f"{path} is not a model bundle: {MODEL_CARD} is missing")
    card = json.loads((path / MODEL_CARD).read_text())
    config = load_config(path)
    items = pd.read_parquet(path / ITEM_SNAPSHOT)
    ranker = Ranker.load(path / "ranker") if config.use_ranker else None
    stack = RecommenderStack(
        TrainedModel.load(path / "model"),
        ItemIndex.load(path / "index"),
        ranker,
        items,
        config,
        transforms_for(card["feature_service"]),
        exact_vectors=(np.load(path / "item_embeddings.npy"), np.load(path / "item_bias.npy")),
    )
    return Bundle(path, stack, card, PopularItems(items))


class OnlineRecommender:
    """Answers a batch of queries from a bundle, degrading instead of failing."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    def answer(
        self,
        queries: list[Query],
        features: UserFeatures | None,
        at: pd.Timestamp,
        feature_failure: str | None = None,
    ) -> tuple[list[Answer], BatchTrace]:
        """One answer per query, in order.

        ``features`` holds the queried users' online features, row-aligned with
        ``queries``; ``None`` with ``feature_failure`` naming why when the
        store could not be read, in which case every user gets popular items.
        """
        trace = BatchTrace()
        if features is None:
            reason = feature_failure or "feature_store_unavailable"
            trace.count(reason, len(queries))
            return [self._popular(query, reason, set(query.exclude)) for query in queries], trace
        if len(features.columns) != len(queries):
            raise ValueError(f"{len(features.columns)} feature rows for {len(queries)} queries")
        excluded = [set(query.exclude) | seen for query, seen in zip(queries, seen_items(features.columns))]
        answers: list[Answer | None] = [None] * len(queries)
        known = np.flatnonzero(features.known)
        for row in np.flatnonzero(~features.known):
            answers[row] = self._popular(queries[row], "unknown_user", excluded[row])
        trace.count("unknown_user", len(queries) - len(known))
        for rows in _distinct_user_rounds([queries[row].user_id for row in known]):
            rows = known[rows]
            stage = StageTrace(degrade=True)
            # Under load every user is known and distinct: the columns as read, not a copy of all their rows.
            whole = len(rows) == len(features.columns)
            lists = self.bundle.stack.recommend(
                features.columns if whole else features.columns.take(rows),
                max(queries[row].k for row in rows),
                {queries[row].user_id: excluded[row] for row in rows},
                at,
                trace=stage,
            )
            for name, seconds in stage.seconds.items():
                trace.seconds[name] = trace.seconds.get(name, 0.0) + seconds
            for reason in stage.fallbacks:
                trace.count(reason, len(rows))
            fallback = ",".join(stage.fallbacks) or None
            # Re-ranking is greedy, so the first k of a longer list are the top-k.
            for row, items in zip(rows, lists):
                answers[row] = Answer(queries[row].user_id, items[: queries[row].k], fallback)
        return answers, trace

    def _popular(self, query: Query, reason: str, exclude: set[str]) -> Answer:
        return Answer(query.user_id, self.bundle.popular.top(query.k, exclude), reason)


def seen_items(users: pd.DataFrame | Columns) -> list[set[str]]:
    """The items each user (a row of online user features) must not be served again: their recent history."""
    if HISTORY_COLUMN not in users:
        return [set() for _ in range(len(users))]
    return [set(history) for history in users[HISTORY_COLUMN]]


def _distinct_user_rounds(user_ids: list[str]) -> list[np.ndarray]:
    """Positions split into rounds in which no user repeats (the stack keys its rows by user).

    Two requests for one user in the same batch are rare; they go through the
    stack in separate calls rather than sharing one user's exclusions.
    """
    rounds: list[list[int]] = []
    seen_in: dict[str, int] = {}
    for position, user in enumerate(user_ids):
        index = seen_in.get(user, -1) + 1
        seen_in[user] = index
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(position)
    return [np.asarray(positions, dtype=np.int64) for positions in rounds]
