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
from pydantic import ValidationError

from recflow.features.training_set import OnDemandTransform
from recflow.ranking.model import RETRIEVAL_SCORE, RankerConfig, train_ranker
from recflow.recommender.stack import RecommenderStack, StackConfig, fewest_candidates
from recflow.reranking.rerank import RerankConfig, rerank_batch
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


# ----------------------------------------------------------------------------- the request path


def _user_side(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"user_log_clicks": np.log1p(frame["user_clicks_7d"])})


def _item_side(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"item_ctr_squared": frame["item_ctr_7d"] ** 2})


def _joint(frame: pd.DataFrame) -> pd.DataFrame:
    """Its item_* column depends on the user too (and on the user-side output): only rows get it right."""
    return pd.DataFrame({"item_ctr_for_user": frame["item_ctr_7d"] * frame["user_log_clicks"]})


# On-demand transforms as the feature store describes them: the stack runs
# the one-sided ones per user or per snapshot item, the joint one per row.
TRANSFORMS = [
    OnDemandTransform("user_side", _user_side, frozenset({"user"})),
    OnDemandTransform("item_side", _item_side, frozenset({"item"})),
    OnDemandTransform("joint", _joint, frozenset({"user", "item"})),
]


def _transformed(frame: pd.DataFrame) -> pd.DataFrame:
    for transform in TRANSFORMS:
        frame = pd.concat([frame, transform(frame)], axis=1)
    return frame


@pytest.fixture(scope="module")
def transformed_stack(stack) -> RecommenderStack:
    """The stack's retrieval with a ranker that also reads the transforms' columns (and no column left out)."""
    frame = _frame(seed=1)
    item_vectors, item_bias = stack.retrieval.item_vectors(frame)
    frame[RETRIEVAL_SCORE] = (stack.retrieval.user_vectors(frame) * item_vectors).sum(axis=1) + item_bias
    ranker, _, _ = train_ranker(_transformed(frame), RankerConfig(epochs=1, batch_size=256))
    outputs = {"user_log_clicks", "item_ctr_squared", "item_ctr_for_user"}
    assert outputs <= set(ranker.config.feature_spec.feature_columns())
    return RecommenderStack(stack.retrieval, stack.index, ranker, _items(), stack.config, TRANSFORMS)


def _straightforward(stack: RecommenderStack, users: pd.DataFrame, k: int, exclude, at) -> list:
    """What recommend computes, the plain way: one joined frame of every (user, candidate) row.

    The frame goes through the transforms and ``Ranker.score``, the training
    path; recommend encodes each user and each snapshot item once instead.
    """
    user_ids = users["user_id"].astype(str).tolist()
    seen = [exclude.get(user, ()) for user in user_ids]
    ids, retrieval = stack.index.search(stack.retrieval.user_vectors(users), stack.config.candidates, seen)
    found = pd.notna(ids.ravel())
    user_rows = np.repeat(np.arange(len(users)), ids.shape[1])[found]
    item_ids = ids.ravel()[found]
    frame = pd.concat(
        [
            users.iloc[user_rows].reset_index(drop=True),
            stack.items.loc[item_ids].reset_index(drop=True),
            pd.DataFrame({RETRIEVAL_SCORE: retrieval.ravel()[found].astype(np.float64)}),
        ],
        axis=1,
    )
    frame["event_timestamp"] = at
    frame = _transformed(frame)
    candidates = pd.DataFrame(
        {
            "user_id": np.asarray(user_ids, dtype=object)[user_rows],
            "item_id": item_ids,
            "score": stack.ranker.score(frame),
            "category": stack.items["item_category"].reindex(item_ids).to_numpy(),
        }
    )
    reranked = rerank_batch(candidates, k, seen=exclude, config=stack.config.rerank)
    lists = {
        user: list(zip(group["item_id"], group["score"])) for user, group in reranked.groupby("user_id", sort=False)
    }
    return [lists.get(user, []) for user in user_ids]


def test_recommend_equals_scoring_the_joined_frame(transformed_stack):
    """Same items, same order, same scores as the plain path: known and new users, a user twice, exclusions,
    and on-demand features computed per user, per snapshot item and per row."""
    stack = transformed_stack
    rng = np.random.default_rng(4)
    histories = [[f"i{i}" for i in rng.integers(0, ITEMS, rng.integers(0, 9))] for _ in range(10)]
    known = _users(histories[:7], list(rng.poisson(5, 7).astype(float)))
    new = _users(histories[7:], [0.0, 2.0, 9.0], prefix="new")  # ids the models never saw
    users = pd.concat([known, new], ignore_index=True)
    users = pd.concat([users, users.iloc[[2]]], ignore_index=True)  # the same user twice in one batch
    exclude = {"u0": {"i0", "i4", "not-an-item"}, "u2": {f"i{i}" for i in range(0, ITEMS, 3)}, "new1": {"i7"}}
    for k in (5, 25):
        lists = stack.recommend(users, k, exclude, AT)
        assert lists == _straightforward(stack, users, k, exclude, AT)
        assert all(len(items) == k for items in lists)
        assert not {item for item, _ in lists[0]} & exclude["u0"]
    for row in (0, 8):  # one user per request, as the server sends them
        one = users.iloc[[row]].reset_index(drop=True)
        assert stack.recommend(one, 10, exclude, AT) == _straightforward(stack, one, 10, exclude, AT)
    assert stack.recommend(users.iloc[:0], 10, {}, AT) == []


def test_fewest_candidates_is_the_smallest_depth_within_the_tolerance():
    assert fewest_candidates({100: 0.1045, 150: 0.1047, 200: 0.1044}) == 100  # the demo world's figures
    assert fewest_candidates({100: 0.134, 200: 0.312}) == 200  # a retrieval model that shortlists poorly
    assert fewest_candidates({100: 0.300, 150: 0.310, 200: 0.312}) == 150
    assert fewest_candidates({100: 0.300, 200: 0.312}, tolerance=0.05) == 100
    assert fewest_candidates({100: float("nan"), 200: float("nan")}) == 200
    assert fewest_candidates({200: 0.1}) == 200


def test_with_candidates_changes_the_retrieval_depth_and_nothing_else(stack):
    users = _users([["i1", "i2"], ["i3"]], [3.0, 1.0])
    shallow = stack.with_candidates(20)
    assert (stack.config.candidates, shallow.config.candidates) == (60, 20)
    assert shallow.config.model_copy(update={"candidates": 60}) == stack.config
    assert [len(items) for items in stack.recommend(users, 30, {}, AT)] == [30, 30]
    assert [len(items) for items in shallow.recommend(users, 30, {}, AT)] == [20, 20]
    with pytest.raises(ValidationError, match="candidates"):
        stack.with_candidates(0)
