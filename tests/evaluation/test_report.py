"""The HTML and Markdown reports: plots embedded, tables present, text escaped."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from recflow.evaluation.evaluate import EvaluationResult
from recflow.evaluation.gate import GateConfig, decide
from recflow.evaluation.report import render_html, render_markdown

EVIL = "<script>alert('x')</script>|model"


def _result(name: str, ndcg: float) -> EvaluationResult:
    per_user = np.array([0.0, ndcg, 2 * ndcg, 1.0])
    return EvaluationResult(
        name=name,
        k=3,
        metrics={
            "precision@3": ndcg / 2,
            "recall@3": ndcg,
            "ndcg@3": ndcg,
            "map": ndcg / 3,
            "hit_rate@3": 0.5,
            "coverage@3": 0.25,
            "users": 4.0,
        },
        ndcg_curve={1: ndcg / 2, 2: ndcg * 0.8, 3: ndcg},
        user_ids=["u1", "u2", "u3", "u4"],
        per_user={"ndcg@3": per_user},
        skipped_users=0,
    )


RESULTS = {EVIL: _result(EVIL, 0.3), "popularity": _result("popularity", 0.2), "oracle": _result("oracle", 0.45)}
DECISION = decide(
    RESULTS[EVIL].metrics,
    RESULTS["popularity"].metrics,
    {"ndcg@3": 0.5},
    GateConfig(min_lift_over_baseline={"ndcg@3": 0.0}, max_regression_vs_blessed={"ndcg@3": 0.05}),
)
CONTEXT = {"dataset": "movielens-100k <v1>", "split": {"protocol": "stratified", "test_rows": 25000}}


def test_html_embeds_three_png_plots():
    page = render_html("Evaluation & gate", RESULTS, DECISION, CONTEXT)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)


def test_html_escapes_text_and_holds_every_table():
    page = render_html("Evaluation & gate", RESULTS, DECISION, CONTEXT)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;|model" in page
    assert "<title>Evaluation &amp; gate</title>" in page
    assert "movielens-100k &lt;v1&gt;" in page
    assert "&quot;test_rows&quot;: 25000" in page
    for heading in ("Metrics", "Blessing checks", "Context"):
        assert f"<h2>{heading}</h2>" in page
    assert '<td class="pass">PASS</td>' in page  # lift over popularity
    assert '<td class="fail">FAIL</td>' in page  # 0.3 vs blessed 0.5
    assert "NOT BLESSED (1/2 checks passed" in page
    assert '<td class="num">0.4500</td>' in page


def test_html_without_decision():
    page = render_html("run", {"popularity": RESULTS["popularity"]}, None, {})
    assert "Blessing checks" not in page
    assert page.count("data:image/png;base64,") == 3


def test_markdown_has_the_same_tables_and_no_plots():
    text = render_markdown("Evaluation & gate", RESULTS, DECISION, CONTEXT)
    assert "data:image" not in text
    assert text.startswith("# Evaluation &amp; gate\n")
    assert "**NOT BLESSED (1/2 checks passed, compared with the last blessed model)**" in text
    assert "| recommender | precision@3 | recall@3 | ndcg@3 | map | hit_rate@3 | coverage@3 | users |" in text
    assert "| &lt;script&gt;alert('x')&lt;/script&gt;\\|model | 0.1500 | 0.3000 |" in text
    assert "| oracle | 0.2250 | 0.4500 | 0.4500 | 0.1500 | 0.5000 | 0.2500 | 4 |" in text
    assert "| regression_vs_blessed | ndcg@3 | 0.3000 | 0.4750 | FAIL |" in text
    for heading in ("## Metrics", "## Blessing checks", "## Context"):
        assert heading in text


def test_reports_need_results():
    with pytest.raises(ValueError, match="at least one"):
        render_html("empty", {}, None, {})


def test_plot_labels_are_shown_verbatim():
    """A '$' would otherwise start matplotlib mathtext (and fail unbalanced)."""
    page = render_html("run", {"cost $5": _result("cost $5", 0.1), "_private": _result("_private", 0.2)}, None, {})
    assert page.count("data:image/png;base64,") == 3
