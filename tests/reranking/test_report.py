import numpy as np
import pandas as pd
import pytest

from recflow.reranking.report import lists_from_frame, render_html, render_markdown, stage_report
from recflow.reranking.rerank import RerankConfig, rerank_batch

CATEGORIES = {"a": "x", "b": "x", "c": "x", "d": "y", "e": "y", "f": "z", "g": None, "h": "z"}
STAGES = {
    "retrieval": {"u1": ["a", "b", "c"], "u2": ["a", "b", "d"]},
    "ranking": {"u1": ["c", "a", "b", "f"], "u2": ["d", "a", "b"]},  # u1's 4th item is cut at k=3
    "reranking": {"u1": ["a", "d", "f"], "u2": ["d", "a", "g"]},
}
RELEVANT = {"u1": ["f"], "u2": ["d"], "u3": ["a"]}  # u3 is in no stage: an empty list, NDCG 0


def test_hand_made_example():
    report = stage_report(STAGES, CATEGORIES, k=3, relevant=RELEVANT)
    assert list(report.index) == ["retrieval", "ranking", "reranking"]
    assert list(report["users"]) == [2, 2, 2]
    # Coverage over 8 catalogue items: {a,b,c,d}, {a,b,c,d}, {a,d,f,g}.
    assert list(report["coverage"]) == pytest.approx([4 / 8, 4 / 8, 4 / 8])
    # ILD: retrieval u1 (x,x,x) = 0, u2 (x,x,y) = 2/3; reranking u1 (x,y,z) = 1, u2 (y,x,None) = 1.
    assert report.loc["retrieval", "ild_category"] == pytest.approx(1 / 3)
    assert report.loc["ranking", "ild_category"] == pytest.approx(1 / 3)
    assert report.loc["reranking", "ild_category"] == pytest.approx(1.0)
    # Distinct known categories: retrieval 1 and 2; reranking 3 and 2 (g has none).
    assert list(report["distinct_categories"]) == pytest.approx([1.5, 1.5, 2.5])
    # NDCG@3 over u1, u2, u3: retrieval: 0, d at 3 -> 1/log2(4) = .5, 0; ranking: 0, 1, 0; reranking: .5, 1, 0.
    assert list(report["ndcg@3"]) == pytest.approx([0.5 / 3, 1 / 3, 1.5 / 3])
    assert list(report["mean_length"]) == [3.0, 3.0, 3.0]


def test_embedding_diversity_and_short_lists():
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0]), "d": np.array([0.0, 1.0])}
    stages = {"s": {"u1": ["a", "b", "d"], "u2": ["a"], "u3": []}}
    report = stage_report(stages, CATEGORIES, k=3, item_vectors=vectors)
    # u1 pairs: (a,b) distance 0, (a,d) 1, (b,d) 1 -> 2/3; u2 and u3 have fewer than 2 items.
    assert report.loc["s", "ild_embedding"] == pytest.approx(2 / 3)
    assert report.loc["s", "ild_category"] == pytest.approx(2 / 3)
    assert report.loc["s", "distinct_categories"] == pytest.approx((2 + 1 + 0) / 3)
    assert "ndcg@3" not in report.columns


def test_catalog_size_and_validation():
    report = stage_report({"s": {"u": ["a", "a", "b"]}}, CATEGORIES, k=5, catalog_size=100)
    assert report.loc["s", "coverage"] == pytest.approx(2 / 100)
    assert report.loc["s", "mean_length"] == 2  # the repeat is dropped
    with pytest.raises(ValueError):
        stage_report({"s": {}}, {}, k=3)
    with pytest.raises(ValueError):
        stage_report({"s": {}}, CATEGORIES, k=0)


def test_rendering():
    report = stage_report(STAGES, CATEGORIES, k=3, relevant=RELEVANT)
    markdown = render_markdown(report, title="Stages")
    assert markdown.splitlines()[0] == "## Stages"
    assert "| stage | users | mean_length | coverage | ild_category | distinct_categories | ndcg@3 |" in markdown
    assert "| reranking | 2 | 3.0000 | 0.5000 | 1.0000 | 2.5000 | 0.5000 |" in markdown
    html = render_html(report, title="Stages <funnel>")
    assert "<h2>Stages &lt;funnel&gt;</h2>" in html
    assert html.count("<tr>") == 4 and "<th>reranking</th>" in html


def test_lists_from_rerank_batch_output():
    candidates = pd.DataFrame(
        {
            "user_id": ["u1"] * 4 + ["u2"] * 3,
            "item_id": ["a", "b", "d", "f", "a", "d", "e"],
            "score": [0.9, 0.8, 0.5, 0.1, 0.2, 0.9, 0.8],
        }
    ).assign(category=lambda f: f["item_id"].map(CATEGORIES))
    retrieval = lists_from_frame(candidates, order_column="-score")
    assert retrieval == {"u1": ["a", "b", "d", "f"], "u2": ["d", "e", "a"]}
    reranked = lists_from_frame(rerank_batch(candidates, 3, config=RerankConfig(mmr_lambda=0.0)))
    assert reranked == {"u1": ["a", "d", "f"], "u2": ["d", "a", "e"]}
    report = stage_report({"retrieval": retrieval, "reranking": reranked}, CATEGORIES, k=3)
    assert report.loc["reranking", "ild_category"] > report.loc["retrieval", "ild_category"]
