"""The live drift monitor over a real feedback log: windows, verdicts, the model it follows, and the gauges."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from recflow.data.dataset import Dataset
from recflow.feedback.log import FeedbackEvent, FeedbackLog
from recflow.monitoring.live import (
    CLICKED,
    REFERENCE_FILE,
    SCORES_KEY,
    SERVED,
    LiveDriftMonitor,
    MonitorConfig,
    fit_references,
    read_references,
    read_score_reference,
    write_reference,
)
from recflow.monitoring.scores import SCORE_BUCKETS, ScoreReference

CATEGORIES = [f"c{i}" for i in range(6)]
ITEMS = pd.DataFrame({"item_id": [f"i{n}" for n in range(60)], "item_category": [CATEGORIES[n % 6] for n in range(60)]})
CONFIG = MonitorConfig(min_clicks=100, min_impressions=500, window_events=1000)
EVEN = np.full(6, 1 / 6)
# Tastes moved: clicks crowd into two categories.
SKEWED = np.array([0.4, 0.4, 0.05, 0.05, 0.05, 0.05])


def draw_items(rng: np.random.Generator, shares: np.ndarray, n: int) -> list[str]:
    categories = rng.choice(6, size=n, p=shares)
    return [f"i{category + 6 * rng.integers(10)}" for category in categories]


def make_bundle(root: Path, version: str, rng: np.random.Generator) -> Path:
    bundle = root / version
    bundle.mkdir(parents=True)
    ITEMS.to_parquet(bundle / "item_features.parquet", index=False)
    categories = pd.Series(ITEMS["item_category"].to_numpy(), index=ITEMS["item_id"])
    references = fit_references(draw_items(rng, EVEN, 3000), categories, CONFIG)
    scores = ScoreReference((0,) * 10 + (30,) * 10 + (0,), 50)
    write_reference(bundle, references, scores, {"from": "2026-01-01", "to": "2026-01-03"})
    return bundle


def log_traffic(log: FeedbackLog, rng, version: str, impressions: int, click_shares: np.ndarray, variant="stable"):
    """Impressions spread evenly over the categories; one in five clicked, clicks drawn from ``click_shares``."""
    at = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    shown = draw_items(rng, EVEN, impressions)
    clicked = draw_items(rng, click_shares, impressions // 5)
    events = [(item, False) for item in shown] + [(item, True) for item in clicked]
    offset = len(log)
    log.append([
        FeedbackEvent(event_id=f"e{offset + n}", user_id=f"u{n % 50}", item_id=item, event_timestamp=at, clicked=was_clicked,
                      variant=variant, model_version=version)
        for n, (item, was_clicked) in enumerate(events)
    ])  # fmt: skip


@pytest.fixture
def setting(tmp_path):
    rng = np.random.default_rng(7)
    bundles = tmp_path / "models"
    make_bundle(bundles, "v1", rng)
    log = FeedbackLog(tmp_path / "events.jsonl").open()
    monitor = LiveDriftMonitor(log.path, lambda version: (bundles / version) if (bundles / version).is_dir() else None, CONFIG)
    yield monitor, log, rng, bundles
    log.close()


def test_a_stable_world_raises_no_alarm_and_moved_tastes_do(setting):
    monitor, log, rng, _ = setting
    log_traffic(log, rng, "v1", 1500, EVEN)
    report = monitor.poll()
    assert report["model_version"] == "v1" and not report["drifted"], report
    assert report["windows"][CLICKED]["enough_rows"] and report["windows"][SERVED]["enough_rows"]
    assert REGISTRY.get_sample_value("recflow_drift_detected") == 0.0

    log_traffic(log, rng, "v1", 1500, SKEWED)  # the window (1000 events) now holds only the new tastes
    report = monitor.poll()
    assert report["drifted"], report
    clicked = report["windows"][CLICKED]["columns"][0]
    assert clicked["drifted"] and clicked["score"] > CONFIG.clicked_js_threshold
    assert not report["windows"][SERVED]["columns"][0]["drifted"]  # what was shown did not change
    assert REGISTRY.get_sample_value("recflow_drift_detected") == 1.0
    assert REGISTRY.get_sample_value("recflow_drift_score", {"column": CLICKED, "metric": "js"}) == clicked["score"]


def test_a_window_too_small_to_tell_is_no_verdict(setting):
    monitor, log, rng, _ = setting
    log_traffic(log, rng, "v1", 200, SKEWED)
    report = monitor.poll()
    assert not report["drifted"] and not report["windows"][CLICKED]["enough_rows"], report


def test_only_the_stable_models_events_count_and_a_new_stable_restarts_the_window(setting):
    monitor, log, rng, bundles = setting
    log_traffic(log, rng, "v1", 1500, EVEN)
    log_traffic(log, rng, "v9", 1500, SKEWED, variant="canary")  # a canary's traffic is not the stable model's
    assert not monitor.poll()["drifted"]
    make_bundle(bundles, "v2", rng)
    log_traffic(log, rng, "v2", 600, EVEN)
    report = monitor.poll()
    assert report["model_version"] == "v2" and report["windows"][SERVED]["rows"] == 600 + 600 // 5


def test_a_model_without_references_is_reported_not_guessed(setting):
    monitor, log, rng, _ = setting
    log_traffic(log, rng, "v-unknown", 1500, SKEWED)
    report = monitor.poll()
    assert "drifted" not in report and "not monitored" in report["status"] and "v-unknown" in report["status"]


def test_thresholds_come_from_the_monitors_config_not_the_stored_reference(setting, tmp_path):
    *_, bundles = setting
    strict = MonitorConfig(clicked_js_threshold=0.001)
    assert read_references(bundles / "v1", strict)[CLICKED].config.js_threshold == 0.001
    assert read_references(tmp_path, strict) is None
    with pytest.raises(ValueError, match="extra"):
        MonitorConfig(clicked_threshold=0.1)


def test_the_exported_bundle_carries_its_references(workspace):
    """The tiny pipeline's bundle: clicks of its last days, the stack's own lists for recent users, and its
    scores for users drawn from all of the data's (the tiny world has fewer than ``reference_users``: all of them)."""
    references = read_references(workspace.bundle, MonitorConfig())
    assert set(references) == {CLICKED, SERVED}
    assert references[CLICKED].rows > 0 and references[SERVED].rows > 0
    assert abs(references[SERVED].shares[SERVED].sum() - 1) < 1e-9
    scores = read_score_reference(workspace.bundle)
    window = json.loads((workspace.bundle / REFERENCE_FILE).read_text())["window"]
    assert len(scores.counts) == len(SCORE_BUCKETS) + 1
    assert window["items"] == references[SERVED].rows
    users = Dataset(Path(workspace.card["data"]["dataset"])).read_users()["user_id"].nunique()
    assert scores.answers == min(users, MonitorConfig().reference_users)
    assert 0 < sum(scores.counts) <= scores.answers * window["k"]  # every served item's score, once


def test_a_bundle_without_export_time_scores_has_no_score_reference(setting, tmp_path):
    *_, bundles = setting
    assert read_score_reference(bundles / "v1") == ScoreReference((0,) * 10 + (30,) * 10 + (0,), 50)
    path = bundles / "v1" / REFERENCE_FILE
    document = json.loads(path.read_text())
    document[SCORES_KEY]["buckets"] = [0.5, 1.0]  # counted over other buckets: not comparable
    path.write_text(json.dumps(document))
    assert read_score_reference(bundles / "v1") is None
    del document[SCORES_KEY]  # exported before bundles carried their scores
    path.write_text(json.dumps(document))
    assert read_score_reference(bundles / "v1") is None and read_references(bundles / "v1", CONFIG) is not None
    assert read_score_reference(tmp_path) is None


def test_on_a_cluster_the_stable_variant_is_whatever_the_inference_service_rolled_out(setting, tmp_path):
    """Feedback on a cluster is labelled with revisions (the server names its own); the monitor asks
    at each poll which one is stable, and follows it through a promotion."""
    _, log, rng, bundles = setting
    make_bundle(bundles, "v2", rng)
    stable = ["recommender-predictor-00001"]
    monitor = LiveDriftMonitor(log.path, lambda version: bundles / version, CONFIG, stable_variant=lambda: stable[0])
    log_traffic(log, rng, "v1", 600, EVEN, variant="recommender-predictor-00001")
    log_traffic(log, rng, "v2", 600, SKEWED, variant="recommender-predictor-00002")  # the canary
    report = monitor.poll()
    assert report["model_version"] == "v1" and not report["drifted"]
    assert report["windows"][SERVED]["rows"] == 600 + 600 // 5  # the stable revision's events only
    stable[0] = "recommender-predictor-00002"  # promoted
    log_traffic(log, rng, "v2", 600, SKEWED, variant="recommender-predictor-00002")
    report = monitor.poll()
    assert report["model_version"] == "v2" and report["windows"][SERVED]["rows"] == 600 + 600 // 5
    assert report["drifted"]  # its clicks crowd into two categories
