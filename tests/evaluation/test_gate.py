"""Blessing scenarios: first model, regressions, missing metrics, bad configs."""

from __future__ import annotations

import json

import pydantic
import pytest

from recflow.evaluation.gate import GateConfig, decide

CONFIG = GateConfig(
    value_thresholds={"ndcg@10": 0.01},
    min_lift_over_baseline={"ndcg@10": 0.0, "recall@10": 0.1},
    max_regression_vs_blessed={"ndcg@10": 0.05},
)
BASELINE = {"ndcg@10": 0.10, "recall@10": 0.20}


def test_first_model_is_compared_with_the_baseline_only():
    decision = decide({"ndcg@10": 0.12, "recall@10": 0.23}, BASELINE, None, CONFIG)
    assert decision.blessed
    assert not decision.compared_with_blessed
    assert [(c.name, c.metric) for c in decision.checks] == [
        ("value_threshold", "ndcg@10"),
        ("lift_over_baseline", "ndcg@10"),
        ("lift_over_baseline", "recall@10"),
    ]
    lift = decision.checks[2]
    assert lift.threshold == pytest.approx(0.22)
    assert lift.value == pytest.approx(0.23)


def test_equal_to_baseline_passes_a_zero_lift():
    config = GateConfig(min_lift_over_baseline={"ndcg@10": 0.0})
    assert decide({"ndcg@10": 0.1}, {"ndcg@10": 0.1}, None, config).blessed


def test_worse_than_baseline_is_not_blessed():
    decision = decide({"ndcg@10": 0.09, "recall@10": 0.30}, BASELINE, None, CONFIG)
    assert not decision.blessed
    failed = [c for c in decision.checks if not c.passed]
    assert [(c.name, c.metric) for c in failed] == [("lift_over_baseline", "ndcg@10")]


def test_regression_beyond_tolerance_vs_blessed_fails():
    candidate = {"ndcg@10": 0.18, "recall@10": 0.30}
    blessed = {"ndcg@10": 0.20, "recall@10": 0.30}  # 10% drop, 5% allowed
    decision = decide(candidate, BASELINE, blessed, CONFIG)
    assert decision.compared_with_blessed
    assert not decision.blessed
    regression = decision.checks[-1]
    assert (regression.name, regression.passed) == ("regression_vs_blessed", False)
    assert regression.threshold == pytest.approx(0.19)
    assert "-10.0%" in regression.detail


def test_regression_within_tolerance_is_blessed():
    decision = decide({"ndcg@10": 0.195, "recall@10": 0.30}, BASELINE, {"ndcg@10": 0.20}, CONFIG)
    assert decision.blessed
    assert decision.checks[-1].name == "regression_vs_blessed"


def test_missing_metric_is_a_failed_check_not_an_error():
    decision = decide({"recall@10": 0.5}, BASELINE, {"ndcg@10": 0.2}, CONFIG)
    assert not decision.blessed
    missing = [c for c in decision.checks if c.metric == "ndcg@10"]
    assert len(missing) == 3
    assert all(not c.passed and "has no valid ndcg@10" in c.detail for c in missing)


def test_missing_reference_metric_fails():
    decision = decide({"ndcg@10": 0.2, "recall@10": 0.5}, {"ndcg@10": 0.1}, None, CONFIG)
    failed = [c for c in decision.checks if not c.passed]
    assert [c.metric for c in failed] == ["recall@10"]
    assert "baseline has no valid recall@10" in failed[0].detail


def test_zero_baseline():
    decision = decide({"ndcg@10": 0.0}, {"ndcg@10": 0.0}, None, GateConfig(min_lift_over_baseline={"ndcg@10": 0.0}))
    assert decision.blessed
    assert "change n/a" in decision.checks[0].detail


def test_unknown_config_key_is_rejected():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        GateConfig(value_threshold={"ndcg@10": 0.0})


@pytest.mark.parametrize("name", ["ndcg", "ndcg@0", "NDCG@10", "auc@10", "map@10", "users"])
def test_unknown_metric_name_is_rejected(name):
    with pytest.raises(pydantic.ValidationError, match="unknown metric name"):
        GateConfig(min_lift_over_baseline={name: 0.0})


def test_negative_regression_tolerance_is_rejected():
    with pytest.raises(pydantic.ValidationError, match="relative drop >= 0"):
        GateConfig(max_regression_vs_blessed={"map": -0.1})


def test_to_dict_and_summary():
    decision = decide({"ndcg@10": 0.18, "recall@10": 0.30}, BASELINE, {"ndcg@10": 0.20}, CONFIG)
    payload = json.loads(json.dumps(decision.to_dict()))
    assert payload["blessed"] is False
    assert payload["checks"][0] == {
        "name": "value_threshold",
        "metric": "ndcg@10",
        "value": 0.18,
        "threshold": 0.01,
        "passed": True,
        "detail": "0.1800, required >= 0.0100",
    }
    summary = decision.summary()
    assert summary.startswith("NOT BLESSED: 3/4 checks passed, compared with the last blessed model")
    assert "[FAIL] regression_vs_blessed ndcg@10" in summary
