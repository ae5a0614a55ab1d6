"""The reference recommenders, the shared top-k helper, and evaluate_recommender."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recflow.evaluation.evaluate import compare, evaluate_recommender
from recflow.evaluation.protocols import Split
from recflow.evaluation.recommenders import (
    EaseRecommender,
    OracleRecommender,
    PopularityRecommender,
    exclusion_mask,
    top_k_from_scores,
)

CUTOFF = pd.Timestamp("2024-03-10", tz="UTC")


def _frame(rows: list[tuple[str, str, bool]], day: int) -> pd.DataFrame:
    """(user, item, clicked) rows in the canonical schema, all on day ``day`` after 2024-03-01."""
    return pd.DataFrame(
        {
            "event_id": [f"d{day}-{i}" for i in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_timestamp": pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(days=day),
            "clicked": [r[2] for r in rows],
            "dwell_seconds": 0.0,
            "rating": np.nan,
        }
    )


class FakeGroundTruth:
    """A stand-in for the synthetic world's ground truth (written in parallel
    elsewhere): only its ``affinity(user_ids, item_ids, day)`` API is used.

    User ``uN`` likes item ``iM`` the more the closer M is to N; the day is
    recorded to check it is passed through, and each call's size is recorded
    to check the chunking.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def affinity(self, user_ids, item_ids, day):
        self.calls.append((len(user_ids), day))
        users = np.array([int(u[1:]) for u in user_ids], dtype=float)[:, None]
        items = np.array([int(i[1:]) for i in item_ids], dtype=float)[None, :]
        return -np.abs(users - items)


def test_top_k_orders_scores_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert top_k_from_scores(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]


def test_top_k_excludes_and_pads():
    scores = np.array([[0.1, 0.9, 0.5], [1.0, 2.0, 3.0]])
    mask = np.array([[False, True, False], [True, True, True]])
    assert top_k_from_scores(scores, 2, mask).tolist() == [[2, 0], [-1, -1]]
    assert top_k_from_scores(scores, 5, mask).tolist() == [[2, 0, -1, -1, -1], [-1, -1, -1, -1, -1]]


def test_top_k_on_a_large_matrix_matches_a_full_sort():
    rng = np.random.default_rng(1)
    scores = rng.random((50, 1000))
    mask = rng.random((50, 1000)) < 0.3
    expected = np.argsort(-np.where(mask, -np.inf, scores), axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(top_k_from_scores(scores, 20, mask), expected)


def test_exclusion_mask_ignores_unknown_items():
    mask = exclusion_mask(["u1", "u2"], {"u1": {"b", "zz"}}, {"a": 0, "b": 1})
    assert mask.tolist() == [[False, True], [False, False]]


TRAIN = _frame(
    [
        ("u1", "a", True),
        ("u2", "a", True),
        ("u3", "b", True),
        ("u3", "c", True),
        ("u1", "d", False),  # impressions do not make an item popular
        ("u2", "d", False),
        ("u3", "d", False),
    ],
    day=1,
)


def test_popularity_ranks_by_clicks_then_id():
    model = PopularityRecommender().fit(TRAIN)
    assert model.ranking == ["a", "b", "c", "d"]
    with_catalog = PopularityRecommender().fit(TRAIN, catalog=["e", "c", "a", "b"])
    assert with_catalog.ranking == ["a", "b", "c", "e"]


def test_popularity_excludes_seen_items():
    model = PopularityRecommender().fit(TRAIN)
    recs = model.recommend(["u1", "u3", "new"], k=2, exclude={"u1": {"a"}, "u3": {"a", "b", "c"}})
    assert recs == [["b", "c"], ["d"], ["a", "b"]]


def test_oracle_ranks_by_affinity_in_chunks():
    truth = FakeGroundTruth()
    catalog = [f"i{n}" for n in range(10)]
    oracle = OracleRecommender(truth, day=12, catalog=catalog, chunk_size=2)
    recs = oracle.recommend(["u3", "u5", "u0", "u9", "u4"], k=3, exclude={"u3": {"i3", "i2"}})
    assert recs == [["i4", "i1", "i5"], ["i5", "i4", "i6"], ["i0", "i1", "i2"], ["i9", "i8", "i7"], ["i4", "i3", "i5"]]
    assert truth.calls == [(2, 12), (2, 12), (1, 12)]


def test_oracle_rejects_a_wrongly_shaped_affinity():
    class Broken:
        def affinity(self, user_ids, item_ids, day):
            return np.zeros((len(user_ids), len(item_ids) + 1))

    with pytest.raises(ValueError, match="affinity returned shape"):
        OracleRecommender(Broken(), day=0, catalog=["i0"]).recommend(["u0"], 1, {})


def _split() -> Split:
    test = _frame(
        [
            ("u1", "b", True),  # new positive
            ("u1", "a", True),  # re-click of a seen item: not relevant
            ("u2", "c", True),
            ("u2", "b", True),
            ("u3", "b", True),  # u3 only re-clicks: skipped
        ],
        day=10,
    )
    return Split("time", TRAIN, test, CUTOFF)


def test_evaluate_popularity_by_hand():
    catalog = ["a", "b", "c", "d"]
    model = PopularityRecommender().fit(TRAIN, catalog)
    result = evaluate_recommender(model, _split(), k=2, catalog=catalog)
    # u1 (seen a): [b, c], relevant {b} -> hit at 1.  u2 (seen a): [b, c], relevant {b, c} -> 2 hits.
    assert result.user_ids == ["u1", "u2"]
    assert result.skipped_users == 1
    assert result.metrics == pytest.approx(
        {
            "precision@2": (0.5 + 1.0) / 2,
            "recall@2": 1.0,
            "ndcg@2": 1.0,
            "map": 1.0,
            "hit_rate@2": 1.0,
            "coverage@2": 2 / 4,
            "users": 2.0,
        }
    )
    assert result.ndcg_curve == pytest.approx({1: 1.0, 2: 1.0})
    np.testing.assert_allclose(result.per_user["precision@2"], [0.5, 1.0])


def test_evaluate_counts_relevant_items_outside_the_catalog():
    model = PopularityRecommender().fit(TRAIN, ["b"])
    result = evaluate_recommender(model, _split(), k=2, catalog=["b"])
    # u2's relevant {b, c} with c unrecommendable: recall 1/2, ndcg 1 / (1 + 1/log2 3).
    np.testing.assert_allclose(result.per_user["recall@2"], [1.0, 0.5])
    np.testing.assert_allclose(result.per_user["ndcg@2"], [1.0, 1 / (1 + 1 / math.log2(3))])


def test_evaluate_subsamples_users_deterministically():
    rows = [(f"u{n}", "a", True) for n in range(30)]
    train = _frame(rows, day=1)
    test = _frame([(f"u{n}", "b", True) for n in range(30)], day=10)
    split = Split("time", train, test, CUTOFF)
    model = PopularityRecommender().fit(train, ["a", "b"])
    first = evaluate_recommender(model, split, k=1, catalog=["a", "b"], max_users=7, seed=3)
    again = evaluate_recommender(model, split, k=1, catalog=["a", "b"], max_users=7, seed=3)
    assert len(first.user_ids) == 7
    assert first.user_ids == again.user_ids == sorted(first.user_ids)
    assert first.metrics["hit_rate@1"] == 1.0


def test_evaluate_rejects_a_recommender_breaking_its_contract():
    class Cheater:
        name = "cheater"

        def recommend(self, user_ids, k, exclude):
            return [["a"] for _ in user_ids]

    with pytest.raises(ValueError, match="excluded item 'a'"):
        evaluate_recommender(Cheater(), _split(), k=2, catalog=["a", "b", "c", "d"])


def test_compare_tabulates_results():
    split = _split()
    full = ["a", "b", "c", "d"]
    results = {
        "popularity": evaluate_recommender(PopularityRecommender().fit(TRAIN, full), split, k=2, catalog=full),
        "only-b": evaluate_recommender(PopularityRecommender().fit(TRAIN, ["b"]), split, k=2, catalog=["b"]),
    }
    table = compare(results)
    assert table.index.tolist() == ["popularity", "only-b"]
    assert table.columns.tolist() == ["precision@2", "recall@2", "ndcg@2", "map", "hit_rate@2", "coverage@2", "users"]
    assert table.loc["popularity", "recall@2"] == pytest.approx(1.0)
    assert table.loc["only-b", "recall@2"] == pytest.approx(0.75)


def test_ease_recommends_what_similar_users_clicked_and_refuses_huge_catalogues():
    # Users a..c click items 1 and 2 together; d clicked 1 only: 2 is what EASE adds for d.
    # Items 3 and 4 are clicked together by e and f only, and never with 1.
    clicks = [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2"), ("c", "1"), ("c", "2"), ("d", "1"),
              ("e", "3"), ("e", "4"), ("f", "3"), ("f", "4")]  # fmt: skip
    train = pd.DataFrame(clicks, columns=["user_id", "item_id"]).assign(clicked=True)
    catalog = ["1", "2", "3", "4", "5"]
    ease = EaseRecommender(l2=1.0).fit(train, catalog)
    lists = ease.recommend(["d", "e", "new"], 2, {"d": {"1"}, "e": {"3", "4"}})
    assert lists[0][0] == "2"
    assert not {"3", "4"} & set(lists[1])  # seen items are never recommended
    assert len(lists[2]) == 2  # an unknown user still gets a (tie-broken) list
    with pytest.raises(ValueError, match="max_items"):
        EaseRecommender(max_items=3).fit(train, catalog)
