"""Behavioural tests of the whole stack (retrieval -> ranking -> re-ranking), trained for real.

Planted data: items fall into four categories; every user has a favourite
category, clicks mostly its items, and their recent history holds them. Two
columns are noise the models are told to leave out. The stack is what
evaluation scores and serving runs, so its behaviour is tested end to end
rather than one model at a time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recflow.ranking.model import RETRIEVAL_SCORE, RankerConfig, train_ranker
from recflow.recommender.stack import RecommenderStack, StackConfig
from recflow.reranking.rerank import RerankConfig
from recflow.retrieval.index import ItemIndex
from recflow.training.config import TrainConfig
from recflow.training.features import FeatureSpec
from recflow.training.inference import TrainedModel
from recflow.training.train import train

CATEGORIES = ["news", "sports", "music", "games"]
ITEMS = 120
USERS = 300
NOISE = ["user_clicks_7d", "item_ctr_7d"]  # present in the data, left out by both models
AT = pd.Timestamp("2024-02-01", tz="UTC")


def _category(item: int) -> str:
    return CATEGORIES[item % len(CATEGORIES)]


def _items() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(ITEMS)],
            "item_category": [_category(i) for i in range(ITEMS)],
            "item_ctr_7d": rng.random(ITEMS),
        }
    )


def _frame(seed: int = 0) -> pd.DataFrame:
    """Clicks (80% in the favourite category) and random non-clicked items, 4 per click."""
    rng = np.random.default_rng(seed)
    favourite = rng.integers(0, len(CATEGORIES), USERS)
    by_category = [np.arange(c, ITEMS, len(CATEGORIES)) for c in range(len(CATEGORIES))]
    rows = []
    for user in range(USERS):
        history = [f"i{i}" for i in rng.choice(by_category[favourite[user]], size=rng.integers(1, 8))]
        for _ in range(6):
            liked = rng.random() < 0.8
            item = rng.choice(by_category[favourite[user]]) if liked else rng.integers(0, ITEMS)
            rows.append((user, item, 1.0, history))
            rows += [(user, negative, 0.0, history) for negative in rng.integers(0, ITEMS, 4)]
    user, item, label, history = zip(*rows)
    items = _items().set_index("item_id")
    item_ids = [f"i{i}" for i in item]
    return pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in user],
            "item_id": item_ids,
            "event_timestamp": AT - pd.to_timedelta(rng.integers(1, 86_400 * 20, len(rows)), unit="s"),
            "label": label,
            "user_recent_item_ids": list(history),
            "user_clicks_7d": rng.poisson(5, len(rows)).astype(np.float64),
            "item_category": items.loc[item_ids, "item_category"].to_numpy(),
            "item_ctr_7d": items.loc[item_ids, "item_ctr_7d"].to_numpy(),
        }
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> RecommenderStack:
    folder = tmp_path_factory.mktemp("stack")
    frame = _frame()
    frame.to_parquet(folder / "training_set.parquet", index=False)
    config = TrainConfig(epochs=4, batch_size=256, ignore_features=NOISE)
    train(folder / "training_set.parquet", FeatureSpec.infer(frame), folder / "model", config)
    retrieval = TrainedModel.load(folder / "model")

    item_vectors, item_bias = retrieval.item_vectors(frame)
    frame[RETRIEVAL_SCORE] = (retrieval.user_vectors(frame) * item_vectors).sum(axis=1) + item_bias
    ranker, _, _ = train_ranker(frame, RankerConfig(epochs=3, batch_size=256, ignore_features=NOISE))

    items = _items()
    vectors, bias = retrieval.item_vectors(items)
    index = ItemIndex.build(items["item_id"].tolist(), vectors, bias)
    return RecommenderStack(retrieval, index, ranker, items, StackConfig(candidates=60, rerank=RerankConfig(mmr_lambda=0.9)))


def _users(histories: list[list[str]], clicks: list[float], prefix: str = "u") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"{prefix}{u}" for u in range(len(histories))],
            "user_recent_item_ids": histories,
            "user_clicks_7d": clicks,
        }
    )


def test_a_feature_the_models_leave_out_changes_nothing(stack):
    rng = np.random.default_rng(2)
    histories = [[f"i{i}" for i in rng.integers(0, ITEMS, 5)] for _ in range(20)]
    before = stack.recommend(_users(histories, [3.0] * 20), 10, {}, AT)
    after = stack.recommend(_users(histories, list(rng.lognormal(5, 2, 20))), 10, {}, AT)
    assert all(len(items) == 10 for items in before)
    assert after == before  # the same items, in the same order, with the same scores

    # The other noise column lives on the item side: the snapshot's values change nothing either.
    shuffled = stack.items.reset_index(drop=True).assign(item_ctr_7d=rng.random(ITEMS))
    restacked = RecommenderStack(stack.retrieval, stack.index, stack.ranker, shuffled, stack.config)
    assert restacked.recommend(_users(histories, [3.0] * 20), 10, {}, AT) == before


def test_a_stronger_signal_for_a_category_moves_its_items_up(stack):
    """A user whose history is mostly sports gets more news as news fills the history.

    The user is new to the models (no id embedding), so the history is all they know of them.
    """
    sports = [f"i{i}" for i in range(1, ITEMS, 4)]
    news = [f"i{i}" for i in range(0, ITEMS, 4)]
    weak = sports[:6] + news[:1]
    strong = sports[:6] + news[:12]
    lists = stack.recommend(_users([weak, strong], [3.0, 3.0], prefix="new"), 10, {}, AT)

    def news_in(items: list[tuple[str, float]]) -> int:
        return sum(item in news for item, _ in items)

    print(f"\nnews items in the top 10: {news_in(lists[0])} with a weak signal, {news_in(lists[1])} with a strong one")
    assert news_in(lists[1]) >= news_in(lists[0]) + 3
