"""ItemIndex: exact search equals brute force, HNSW recall, exclusions, bias, save/load."""

import numpy as np
import pytest

from recflow.retrieval.index import ItemIndex, top_positions


def _catalogue(n_items: int, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"item-{i}" for i in range(n_items)]
    vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    bias = rng.normal(scale=0.5, size=n_items).astype(np.float32)
    users = rng.normal(size=(50, dim)).astype(np.float32)
    return ids, vectors, bias, users


def _brute_force(users, vectors, bias, n, mask=None):
    scores = users @ vectors.T + bias
    if mask is not None:
        scores = np.where(mask, -np.inf, scores)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return top, np.take_along_axis(scores, top, axis=1)


def test_exact_index_equals_brute_force_with_the_bias():
    ids, vectors, bias, users = _catalogue(2_000)
    index = ItemIndex.build(ids, vectors, bias, exact_threshold=10_000)
    assert index.kind == "exact"
    found, scores = index.search(users, 20)
    top, expected = _brute_force(users, vectors, bias, 20)
    assert found.shape == scores.shape == (50, 20)
    np.testing.assert_array_equal(found, np.array(ids, dtype=object)[top])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_the_bias_changes_the_ranking():
    ids, vectors, bias, users = _catalogue(500)
    with_bias, _ = ItemIndex.build(ids, vectors, bias).search(users, 10)
    without_bias, _ = ItemIndex.build(ids, vectors).search(users, 10)
    assert (with_bias != without_bias).any()


def test_hnsw_recall_against_exact_search():
    ids, vectors, bias, users = _catalogue(20_000, dim=32, seed=1)
    hnsw = ItemIndex.build(ids, vectors, bias, exact_threshold=10_000)
    exact = ItemIndex.build(ids, vectors, bias, exact_threshold=100_000)
    assert hnsw.kind == "hnsw" and exact.kind == "exact"
    for n in (10, 100):
        approximate, approximate_scores = hnsw.search(users, n)
        truth, _ = exact.search(users, n)
        recall = np.mean([len(set(a) & set(t)) / n for a, t in zip(approximate, truth)])
        assert recall >= 0.95, (n, recall)
        # Whatever HNSW returns, it returns with its exact score.
        position = {item: i for i, item in enumerate(ids)}
        rows = np.array([[position[item] for item in row] for row in approximate])
        expected = np.einsum("ud,und->un", users, vectors[rows]) + bias[rows]
        np.testing.assert_allclose(approximate_scores, expected, rtol=1e-4, atol=1e-4)


def test_exclusions_by_mask_and_by_lists():
    ids, vectors, bias, users = _catalogue(300)
    index = ItemIndex.build(ids, vectors, bias)
    rng = np.random.default_rng(3)
    mask = rng.random((len(users), len(ids))) < 0.3
    mask[0] = True  # a user who has seen everything gets nothing
    mask[1, :] = True
    mask[1, :5] = False  # ... and one with only 5 allowed items gets 5 and padding
    found, scores = index.search(users, 10, mask)
    top, expected = _brute_force(users, vectors, bias, 10, mask)
    assert all(item is None for item in found[0]) and np.isneginf(scores[0]).all()
    assert [item is not None for item in found[1]] == [True] * 5 + [False] * 5
    for row in range(2, len(users)):
        np.testing.assert_array_equal(found[row], np.array(ids, dtype=object)[top[row]])
    np.testing.assert_allclose(scores[2:], expected[2:], rtol=1e-5, atol=1e-5)

    lists = [[ids[j] for j in np.flatnonzero(row)] + ["not-in-the-index"] for row in mask]
    by_lists, _ = index.search(users, 10, lists)
    np.testing.assert_array_equal(by_lists, found)


def test_search_checks_its_inputs():
    ids, vectors, bias, users = _catalogue(100)
    index = ItemIndex.build(ids, vectors, bias)
    with pytest.raises(ValueError, match="dimensions"):
        index.search(users[:, :5], 10)
    with pytest.raises(ValueError, match="n must be"):
        index.search(users, 0)
    with pytest.raises(ValueError, match="mask has shape"):
        index.search(users, 10, np.zeros((3, 100), dtype=bool))
    with pytest.raises(ValueError, match="duplicates"):
        ItemIndex.build(ids[:-1] + ids[:1], vectors, bias)
    # More items asked for than the catalogue has: padded.
    found, scores = index.search(users[:2], 150)
    assert sum(item is not None for item in found[0]) == 100 and np.isneginf(scores[0, 100:]).all()


@pytest.mark.parametrize("threshold", [100_000, 1_000])
def test_save_and_load_round_trip(tmp_path, threshold):
    ids, vectors, bias, users = _catalogue(3_000)
    index = ItemIndex.build(ids, vectors, bias, exact_threshold=threshold)
    before = index.search(users, 25)
    loaded = ItemIndex.load(index.save(tmp_path / "index"))
    assert loaded.kind == index.kind and loaded.item_ids == ids and len(loaded) == 3_000
    after = loaded.search(users, 25)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_top_positions_breaks_ties_by_column_and_never_picks_excluded():
    """Equal scores at the edge of the n best go to the smaller column, whatever the partial sort picked."""
    scores = np.array(
        [
            [1.0, 3.0, 2.0, 2.0, 2.0, 0.5],  # three tied for the 2nd and 3rd places
            [-np.inf, 1.0, -np.inf, -np.inf, -np.inf, -np.inf],  # one allowed item: padded
            [5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
        ],
        dtype=np.float32,
    )
    positions, best = top_positions(scores, 3)
    assert positions.tolist() == [[1, 2, 3], [1, -1, -1], [0, 1, 2]]
    assert best[0].tolist() == [3.0, 2.0, 2.0] and best[1, 0] == 1.0 and np.isneginf(best[1, 1:]).all()
    rng = np.random.default_rng(7)
    many = rng.integers(0, 4, size=(40, 30)).astype(np.float32)  # many ties
    expected = np.lexsort((np.broadcast_to(np.arange(30), many.shape), -many), axis=1)[:, :7]
    np.testing.assert_array_equal(top_positions(many, 7)[0], expected)
    assert top_positions(many, 50)[0][:, 30:].tolist() == [[-1] * 20] * 40
