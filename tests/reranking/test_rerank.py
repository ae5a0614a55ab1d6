import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from recflow.reranking.rerank import RerankConfig, rerank, rerank_batch

HAND = pd.DataFrame(
    {
        "item_id": ["a", "b", "c", "d", "e", "f"],
        "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        "category": ["x", "x", "x", "y", "y", "z"],
    }
)


def _random_candidates(seed: int, n: int = 40, categories: int = 4, users: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for u in range(users):
        frames.append(
            pd.DataFrame(
                {
                    "user_id": f"u{u}",
                    "item_id": [f"i{j:03d}" for j in rng.permutation(200)[:n]],
                    "score": rng.integers(0, 10, n) / 10.0,  # ties on purpose
                    "category": [f"c{j}" for j in rng.integers(0, categories, n)],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _ids(result):
    return [item for item, _ in result]


def test_hand_computed_mmr():
    # λ=.5, normalised relevance a..f = 1, .8, .6, .4, .2, 0.
    # pick a; then d: .5*.4 - 0 = .2 beats b: .5*.8 - .5 = -.1; then f: 0 - 0 = 0 beats b: -.1, e: .1 - .5;
    # then every item is redundant: b, c, e by relevance.
    assert rerank(HAND, 6, config=RerankConfig(mmr_lambda=0.5)) == [
        ("a", 0.9), ("d", 0.6), ("f", 0.4), ("b", 0.8), ("c", 0.7), ("e", 0.5)
    ]  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_lambda_one_is_a_sort_by_score_ties_by_item_id(seed):
    candidates = _random_candidates(seed)
    expected = sorted(zip(candidates["item_id"], candidates["score"]), key=lambda pair: (-pair[1], pair[0]))
    assert rerank(candidates, 15, config=RerankConfig(mmr_lambda=1.0)) == expected[:15]


def test_lambda_zero_covers_every_category_first():
    candidates = _random_candidates(1, n=60, categories=4)
    result = rerank(candidates, 10, config=RerankConfig(mmr_lambda=0.0))
    category = dict(zip(candidates["item_id"], candidates["category"]))
    first = [category[item] for item in _ids(result)[:4]]
    assert len(set(first)) == 4
    # Each pick is the best remaining item of a category not yet shown.
    best_of = candidates.sort_values(["score", "item_id"], ascending=[False, True]).drop_duplicates("category")
    assert set(_ids(result)[:4]) == set(best_of["item_id"])


def test_lambda_zero_with_mean_redundancy_alternates_categories():
    candidates = pd.DataFrame(
        {
            "item_id": [f"i{j}" for j in range(8)],
            "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2],
            "category": ["x", "x", "x", "x", "y", "y", "y", "y"],
        }
    )
    result = rerank(candidates, 8, config=RerankConfig(mmr_lambda=0.0, redundancy="mean"))
    category = dict(zip(candidates["item_id"], candidates["category"]))
    assert [category[item] for item in _ids(result)] == ["x", "y"] * 4
    assert _ids(result) == ["i0", "i4", "i1", "i5", "i2", "i6", "i3", "i7"]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_seen_and_blocked_items_are_never_returned(seed, lam):
    candidates = _random_candidates(seed, n=50)
    rng = np.random.default_rng(seed)
    seen = set(rng.choice(candidates["item_id"], 10, replace=False))
    blocked = set(rng.choice(candidates["item_id"], 5, replace=False))
    config = RerankConfig(mmr_lambda=lam, blocked_items=blocked, blocked_categories={"c1"})
    result = _ids(rerank(candidates, 50, seen=seen, config=config))
    category = dict(zip(candidates["item_id"], candidates["category"]))
    assert not set(result) & (seen | blocked)
    assert "c1" not in {category[item] for item in result}
    allowed = {i for i in candidates["item_id"] if i not in seen | blocked and category[i] != "c1"}
    assert set(result) == allowed  # k is large enough for all of them
    # exclude_seen=False lets seen items back in; blocked ones stay out.
    relaxed = _ids(rerank(candidates, 50, seen=seen, config=config.model_copy(update={"exclude_seen": False})))
    assert set(relaxed) == {i for i in candidates["item_id"] if i not in blocked and category[i] != "c1"}


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_max_per_category_is_honoured(lam):
    candidates = _random_candidates(3, n=60, categories=3)
    result = rerank(candidates, 20, config=RerankConfig(mmr_lambda=lam, max_per_category=2))
    category = dict(zip(candidates["item_id"], candidates["category"]))
    counts = pd.Series([category[i] for i in _ids(result)]).value_counts()
    assert counts.max() <= 2
    assert len(result) == 6  # 3 categories x 2: the list ends early rather than break the cap


def test_deterministic_and_independent_of_input_order():
    candidates = _random_candidates(7, n=50)
    config = RerankConfig(mmr_lambda=0.6, max_per_category=4)
    reference = rerank(candidates, 12, config=config)
    for seed in range(5):
        shuffled = candidates.sample(frac=1.0, random_state=seed)
        assert rerank(shuffled, 12, config=config) == reference


def test_duplicates_keep_their_best_score_and_nan_scores_are_dropped():
    candidates = pd.DataFrame(
        {"item_id": ["a", "a", "b", "c"], "score": [0.1, 0.9, 0.5, np.nan], "category": ["x", "x", "y", "z"]}
    )
    assert rerank(candidates, 5, config=RerankConfig(mmr_lambda=1.0)) == [("a", 0.9), ("b", 0.5)]


def test_batch_equals_one_user_at_a_time():
    candidates = _random_candidates(11, n=30, users=6)
    seen = {"u0": list(candidates["item_id"][:5]), "u3": list(candidates["item_id"][95:100])}
    config = RerankConfig(mmr_lambda=0.4, max_per_category=3, blocked_categories={"c2"})
    batch = rerank_batch(candidates, 8, seen=seen, config=config)
    assert list(batch.columns) == ["user_id", "item_id", "score", "rank"]
    for user, group in candidates.groupby("user_id"):
        expected = rerank(group, 8, seen=set(seen.get(user, ())), config=config)
        got = batch[batch["user_id"] == user].sort_values("rank")
        assert list(zip(got["item_id"], got["score"])) == expected
        assert list(got["rank"]) == list(range(1, len(expected) + 1))
        assert not set(got["item_id"]) & set(seen.get(user, ()))


def test_category_boost_and_freshness():
    base = rerank(HAND, 3, config=RerankConfig(mmr_lambda=1.0))
    assert _ids(base) == ["a", "b", "c"]
    boosted = rerank(HAND, 3, config=RerankConfig(mmr_lambda=1.0, boost_categories={"z": 2.0}))
    assert _ids(boosted)[0] == "f"
    aged = HAND.assign(age_hours=[100.0, 100.0, 100.0, 100.0, 0.0, np.nan])
    fresh = rerank(aged, 2, config=RerankConfig(mmr_lambda=1.0, freshness_boost=1.0, freshness_half_life_hours=10))
    assert _ids(fresh) == ["e", "a"]  # .2 + 1.0 beats a's 1.0 + ~0.001
    too_young = rerank(aged, 6, config=RerankConfig(mmr_lambda=1.0, min_item_age_hours=1.0))
    assert "e" not in _ids(too_young) and "f" in _ids(too_young)  # unknown age passes


def test_embedding_diversity():
    candidates = pd.DataFrame({"item_id": ["a", "b", "c"], "score": [0.9, 0.85, 0.5]})
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])  # b nearly duplicates a
    config = RerankConfig(mmr_lambda=0.5, diversity="embedding")
    assert _ids(rerank(candidates, 3, config=config, embeddings=vectors)) == ["a", "c", "b"]
    assert _ids(rerank(candidates, 3, config=config.model_copy(update={"mmr_lambda": 1.0}), embeddings=vectors)) == [
        "a",
        "b",
        "c",
    ]
    with pytest.raises(ValueError, match="embeddings"):
        rerank(candidates, 3, config=config)
    batch = rerank_batch(candidates.assign(user_id="u"), 3, config=config, embeddings=vectors)
    assert list(batch["item_id"]) == ["a", "c", "b"]


def test_edge_cases_and_config_validation():
    assert rerank({"item_id": [], "score": []}, 3) == []
    assert rerank({"item_id": ["a"], "score": [1.0]}, 3) == [("a", 1.0)]  # no categories: plain sort
    assert rerank(HAND.rename(columns={"category": "item_category"}), 2, config=RerankConfig(mmr_lambda=0.0)) == [
        ("a", 0.9),
        ("d", 0.6),
    ]
    assert rerank_batch(HAND.assign(user_id="u").iloc[:0], 3).empty
    with pytest.raises(ValueError):
        rerank(HAND, 0)
    with pytest.raises(ValidationError):
        RerankConfig(mmr_lambda=1.5)
    with pytest.raises(ValidationError, match="lamda"):
        RerankConfig.model_validate({"mmr_lamda": 0.5})
    with pytest.raises(ValidationError):
        RerankConfig(max_per_category=0)
