"""Ranking metrics against values computed by hand, and against a naive per-user loop."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from recflow.evaluation.metrics import (
    Relevance,
    average_precision,
    catalog_coverage,
    hit_rate_at_k,
    ndcg_at_k,
    ndcg_curve,
    per_user_metrics,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
)

L3 = 1 / math.log2(3)  # discount of position 2
L4 = 1 / math.log2(4)  # discount of position 3

# user 0: one hit at position 2 of 2 relevant
# user 1: one item recommended (padded), a hit at position 1, 1 relevant
# user 2: hits at positions 1 and 3, 5 relevant (more than k)
# user 3: no hit
RECOMMENDED = np.array([[1, 2, 3], [4, -1, -1], [7, 8, 9], [0, 1, 2]])
RELEVANT = [np.array([2, 5]), np.array([4]), np.array([9, 7, 10, 11, 12]), np.array([6])]


def test_per_user_values_match_hand_computation():
    assert precision_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx([1 / 3, 1 / 3, 2 / 3, 0])
    assert recall_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx([1 / 2, 1, 2 / 5, 0])
    assert ndcg_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx(
        [L3 / (1 + L3), 1.0, (1 + L4) / (1 + L3 + L4), 0.0]
    )
    # AP divides by |relevant| even when it exceeds k: user 2 gets (1/1 + 2/3) / 5.
    assert average_precision(RECOMMENDED, RELEVANT, 3) == pytest.approx([(1 / 2) / 2, 1.0, (1 + 2 / 3) / 5, 0.0])
    assert hit_rate_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx([1, 1, 1, 0])


def test_ranking_metrics_are_the_means():
    metrics = ranking_metrics(RECOMMENDED, RELEVANT, k=3, catalog_size=20)
    assert metrics == pytest.approx(
        {
            "precision@3": 1 / 3,
            "recall@3": (0.5 + 1 + 0.4) / 4,
            "ndcg@3": (L3 / (1 + L3) + 1 + (1 + L4) / (1 + L3 + L4)) / 4,
            "map": (0.25 + 1 + 1 / 3) / 4,
            "hit_rate@3": 0.75,
            "coverage@3": 8 / 20,  # items 0, 1, 2, 3, 4, 7, 8, 9
            "users": 4.0,
        }
    )


def test_ndcg_curve_by_hand():
    curve = ndcg_curve(RECOMMENDED, RELEVANT, [1, 2, 3])
    at_2 = (L3 / (1 + L3) + 1 + 1 / (1 + L3) + 0) / 4
    assert curve == pytest.approx([0.5, at_2, ranking_metrics(RECOMMENDED, RELEVANT, 3, 20)["ndcg@3"]])


def test_k_truncates_and_pads_recommendations():
    wide = np.array([[5, 2, 1, 3]])
    assert precision_at_k(wide, [[1, 3]], 2) == pytest.approx([0.0])
    assert precision_at_k(wide, [[1, 3]], 4) == pytest.approx([0.5])
    # Two items asked for k=4: precision still divides by k.
    assert precision_at_k(np.array([[1, 3]]), [[1, 3]], 4) == pytest.approx([0.5])
    assert ndcg_at_k(np.array([[1, 3]]), [[1, 3]], 4) == pytest.approx([1.0])


def test_relevance_forms_are_equivalent_and_deduplicated():
    csr = Relevance.from_csr(np.array([0, 3, 4, 9, 10]), np.array([5, 2, 2, 4, 12, 11, 10, 9, 7, 6]))
    assert csr.counts.tolist() == [2, 1, 5, 1]
    from_lists = per_user_metrics(RECOMMENDED, RELEVANT, 3)
    from_csr = per_user_metrics(RECOMMENDED, csr, 3)
    for name in from_lists:
        np.testing.assert_allclose(from_csr[name], from_lists[name])


def test_coverage_counts_distinct_items_within_k():
    assert catalog_coverage(np.array([[0, 1, 2], [1, 0, -1]]), 2, catalog_size=10) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("recommended", "relevant", "message"),
    [
        (np.array([[1, 1]]), [[1]], "repeats"),
        (np.array([[1, 2]]), [[]], "no relevant"),
        (np.array([[1, 2]]), [[1], [2]], "users"),
        (np.array([[1.0, 2.0]]), [[1]], "integer"),
        (np.array([[-2, 1]]), [[1]], "-1 for padding"),
    ],
)
def test_invalid_inputs_are_rejected(recommended, relevant, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics(recommended, relevant, 2, 10)


def _naive(recommended, relevant, k):
    """The textbook definitions, one user at a time."""
    rows = []
    for rec, rel in zip(recommended, relevant):
        rel = set(rel.tolist())
        rec = [i for i in rec[:k] if i >= 0]
        hits = [i in rel for i in rec]
        dcg = sum(1 / math.log2(p + 2) for p, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(p + 2) for p in range(min(len(rel), k)))
        ap = sum(sum(hits[: p + 1]) / (p + 1) for p, h in enumerate(hits) if h) / len(rel)
        rows.append([sum(hits) / k, sum(hits) / len(rel), dcg / idcg, ap, float(any(hits))])
    return np.array(rows)


def test_matches_naive_definitions_on_random_data():
    rng = np.random.default_rng(7)
    n_users, n_items, k = 300, 40, 10
    recommended = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    recommended[rng.random(recommended.shape) < 0.1] = -1
    recommended = np.stack([np.concatenate([r[r >= 0], r[r < 0]]) for r in recommended])
    relevant = [rng.choice(n_items, size=rng.integers(1, 15), replace=False) for _ in range(n_users)]
    fast = per_user_metrics(recommended, relevant, k)
    expected = _naive(recommended, relevant, k)
    names = [f"precision@{k}", f"recall@{k}", f"ndcg@{k}", "map", f"hit_rate@{k}"]
    for column, name in enumerate(names):
        np.testing.assert_allclose(fast[name], expected[:, column], err_msg=name)


def test_twenty_thousand_users_well_under_a_second():
    rng = np.random.default_rng(0)
    n_users, n_items, k = 20_000, 5_000, 10
    recommended = np.argsort(rng.random((n_users, 200)), axis=1)[:, :k] * 25
    relevant = [rng.choice(n_items, size=rng.integers(1, 30), replace=False) for _ in range(n_users)]
    start = time.perf_counter()
    ranking_metrics(recommended, relevant, k, n_items)
    ndcg_curve(recommended, relevant, range(1, k + 1))
    assert time.perf_counter() - start < 1.0
