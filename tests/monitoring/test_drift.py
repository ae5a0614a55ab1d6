"""Drift scores, the verdict on real worlds with and without drift, the gauges, and the alert rules."""

from __future__ import annotations

import math
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

import recflow.monitoring
from recflow.data.world import generate_world, world_config
from recflow.monitoring.drift import DriftConfig, DriftReference, jensen_shannon, psi, publish

RULES = Path(recflow.monitoring.__file__).parent / "rules"
CONFIG = DriftConfig(categorical=["category"], numeric=["dwell_seconds"], min_rows=100)


def test_identical_distributions_score_zero_and_disjoint_ones_the_maximum():
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == pytest.approx(0.0)
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(math.log(2))
    assert psi([0.5, 0.5], [0.9, 0.1]) > psi([0.5, 0.5], [0.6, 0.4]) > 0


def test_a_shifted_number_is_drift_and_a_resample_is_not():
    rng = np.random.default_rng(0)
    config = DriftConfig(numeric=["x"], min_rows=100)
    reference = DriftReference.fit(pd.DataFrame({"x": rng.normal(0, 1, 5000)}), config)
    assert not reference.compare(pd.DataFrame({"x": rng.normal(0, 1, 2000)})).drifted
    shifted = reference.compare(pd.DataFrame({"x": rng.normal(1, 1, 2000)}))
    assert shifted.drifted and shifted.columns[0].score > 0.25


def _clicks_before_and_after(seed: int, drift: bool, split_day: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    config = world_config("tiny", seed=seed)
    if not drift:
        config = config.model_copy(update={"drift_start_day": None, "drift_strength": 0.0})
    assert not drift or config.drift_start_day == split_day
    world = generate_world(config)
    clicks = world.events[world.events["clicked"]].merge(world.items[["item_id", "category"]], on="item_id")
    day = (clicks["event_timestamp"] - world.events["event_timestamp"].min()).dt.days
    return clicks[day < split_day], clicks[day >= split_day]


@pytest.mark.parametrize("seed", [0, 1])
def test_drift_injected_in_the_world_is_detected(seed):
    reference, live = _clicks_before_and_after(seed, drift=True)
    report = DriftReference.fit(reference, CONFIG).compare(live)
    assert report.enough_rows
    assert report.drifted, report.to_dict()
    assert {c.column for c in report.columns if c.drifted} == {"category"}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_stable_world_raises_no_alarm_over_the_same_period(seed):
    reference, live = _clicks_before_and_after(seed, drift=False)
    report = DriftReference.fit(reference, CONFIG).compare(live)
    assert report.enough_rows
    assert not report.drifted, report.to_dict()


def test_a_window_too_small_gives_no_verdict():
    reference, live = _clicks_before_and_after(0, drift=True)
    report = DriftReference.fit(reference, CONFIG).compare(live.head(20))
    assert not report.enough_rows and not report.drifted


def test_bad_configuration_and_missing_columns_are_named():
    with pytest.raises(ValidationError, match="psi_treshold"):
        DriftConfig(psi_treshold=0.3)
    reference, _ = _clicks_before_and_after(0, drift=True)
    with pytest.raises(ValueError, match="user_ctr"):
        DriftReference.fit(reference, DriftConfig(numeric=["user_ctr"]))


def test_publish_sets_the_gauges_the_alert_reads():
    reference, live = _clicks_before_and_after(0, drift=True)
    report = DriftReference.fit(reference, CONFIG).compare(live)
    publish(report)
    assert REGISTRY.get_sample_value("recflow_drift_detected") == 1.0
    score = REGISTRY.get_sample_value("recflow_drift_score", {"column": "category", "metric": "js"})
    assert score == pytest.approx(report.columns[1].score)
    assert REGISTRY.get_sample_value("recflow_drift_window_rows", {"column": "category"}) == len(live)


def test_a_reference_survives_its_json_round_trip():
    reference, live = _clicks_before_and_after(0, drift=True)
    fitted = DriftReference.fit(reference, CONFIG)
    restored = DriftReference.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert restored.compare(live).to_dict() == fitted.compare(live).to_dict()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus; .ci/run installs it)")
def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    check = subprocess.run(["promtool", "check", "rules", "recflow-alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(["promtool", "test", "rules", "alerts-test.yml"], cwd=RULES, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
