"""The training pipeline run for real with kfp.local (SubprocessRunner), at tiny scale.

Nothing is mocked: every component runs in a subprocess, Feast applies and
materializes a real SQLite online store, training goes through torchrun.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recflow.pipeline.local import run_pipeline
from recflow.recommender.stack import fewest_candidates

pytestmark = pytest.mark.slow

# The wiring tests bless any model: they are about what the pipeline writes,
# not about model quality (that is the gate's own tests and the demo run).
BLESS_ANY = "{}"
TINY = {"data_source": "world:tiny", "epochs": 1, "nproc_per_node": 2, "test_days": 2}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("workspace")
    return workspace, run_pipeline(workspace, gate=BLESS_ANY, **TINY)


def test_blessed_run_exports_a_complete_bundle(first_run):
    workspace, outputs = first_run
    assert outputs.evaluation["decision"]["blessed"] is True
    assert {"model", "popularity", "oracle"} <= set(outputs.evaluation["results"])
    bundle = outputs.bundle
    assert bundle is not None
    for name in (
        "model/model.pt",
        "model/preprocessor.json",
        "ranker/ranker.json",
        "index/index.faiss",
        "stack.json",
        "item_embeddings.npy",
        "item_bias.npy",
        "item_features.parquet",
    ):
        assert (bundle / name).is_file(), name
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["feature_service"] == "ranking_v1"
    assert set(card["stages"]) == {"retrieval", "ranking", "re-ranking"}
    assert 0 <= card["retrieval"]["recall@100"] <= card["retrieval"]["recall@200"] <= 1
    # Scored with 100 and 200 candidates per user; the bundle retrieves the depth the evaluation chose.
    by_depth = {int(depth): value for depth, value in outputs.evaluation["candidate_depths"]["by_depth"].items()}
    assert set(by_depth) == {100, 200}
    stack = json.loads((bundle / "stack.json").read_text())
    assert stack["candidates"] == fewest_candidates(by_depth) == outputs.evaluation["stack"]["candidates"]
    assert card["metrics"]["model"]["ndcg@10"] == pytest.approx(by_depth[stack["candidates"]])
    assert card["parent_model"] is None
    assert card["blessing"]["blessed"] is True
    assert card["metrics"]["model"]["ndcg@10"] >= 0
    assert card["data"]["source"] == "world"
    registry = json.loads((workspace / "models" / "registry.json").read_text())
    assert [entry["version"] for entry in registry["blessed"]] == [card["version"]]
    report = outputs.report.read_text()
    assert report.count("data:image/png;base64,") >= 3


def test_next_run_is_compared_with_the_blessed_model(first_run):
    workspace, first = first_run
    first_version = json.loads((first.bundle / "model_card.json").read_text())["version"]
    # Same data and seed: the candidate equals the blessed model, so a gate
    # that allows no regression at all still passes, and records its parent.
    gate = json.dumps({"max_regression_vs_blessed": {"ndcg@10": 0.0}})
    second = run_pipeline(workspace, gate=gate, **TINY)
    decision = second.evaluation["decision"]
    assert decision["compared_with_blessed"] is True
    assert "blessed" in second.evaluation["results"]
    assert second.evaluation["results"]["blessed"]["metrics"]["ndcg@10"] == pytest.approx(
        second.evaluation["results"]["model"]["metrics"]["ndcg@10"]
    )
    card = json.loads((second.bundle / "model_card.json").read_text())
    assert card["parent_model"] == first_version


def _write_ratings(path: Path, rows: list[str]) -> Path:
    path.mkdir()
    (path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    return path


GOOD_ROWS = [f"{u},{i},4.0,{1_700_000_000 + 3600 * (u * 7 + i)}" for u in range(1, 9) for i in range(1, 7)]


@pytest.mark.parametrize(
    ("corruption", "rows", "named"),
    [
        ("wrong column type", GOOD_ROWS[:5] + ["1,9,five,1700000123"] + GOOD_ROWS[5:], "rating"),
        ("negative timestamps", GOOD_ROWS[:3] + ["2,9,3.0,-1700000000"] + GOOD_ROWS[3:], "negative_timestamp"),
        ("duplicate events", GOOD_ROWS + [GOOD_ROWS[7]], "duplicate"),
    ],
)
def test_corrupted_input_fails_at_validation_and_writes_nothing(tmp_path, corruption, rows, named):
    source = _write_ratings(tmp_path / "ml", rows)
    workspace = tmp_path / "workspace"
    with pytest.raises(RuntimeError, match="validate-data"):
        run_pipeline(workspace, data_source=str(source), **{k: v for k, v in TINY.items() if k != "data_source"})
    (run_dir,) = (workspace / "pipeline_runs").iterdir()
    report = (run_dir / "validate-data" / "report").read_text()
    assert named in report, report
    # Nothing downstream of validation was written.
    assert not (run_dir / "validate-data" / "dataset").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["ingest-data", "validate-data"]
    assert not (workspace / "feature_repo").exists()
    assert not (workspace / "models").exists()
