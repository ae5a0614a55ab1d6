import math

import numpy as np
import pandas as pd
import pytest

from recflow.ranking.features import CROSS_FEATURES, CategoryLookup, cross_features

LOOKUP = {"a": "x", "b": "y", "c": "x", "d": "z", "e": None}
NOW = pd.Timestamp("2024-03-02 12:00", tz="UTC")


def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {
        "user_id": "u1",
        "item_id": "i1",
        "event_timestamp": NOW,
        "user_last_click_ts": int((NOW - pd.Timedelta(hours=3)).timestamp()),
        "item_created_ts": int((NOW - pd.Timedelta(hours=47)).timestamp()),
    }
    return pd.DataFrame([{**base, **row} for row in rows])


def test_hand_computed_values():
    frame = _frame(
        [
            {"user_recent_item_ids": ["a", "b", "c"], "item_category": "x"},  # 2 of 3 are x, newest (c) is x
            {"user_recent_item_ids": ["a", "b", "c"], "item_category": "y"},
            {"user_recent_item_ids": ["a", "zzz", "e"], "item_category": "x"},  # unknown id and null category
            {"user_recent_item_ids": [], "item_category": "x"},
            {"user_recent_item_ids": None, "item_category": "x"},
            {"user_recent_item_ids": ["a"], "item_category": None},
            {"user_recent_item_ids": ["a"], "item_category": "brand-new"},
        ]
    )
    out = cross_features(frame, LOOKUP)
    assert list(out.columns) == list(CROSS_FEATURES)
    expected_count = [2, 1, 1, 0, 0, math.nan, 0]
    expected_fraction = [2 / 3, 1 / 3, 1.0, math.nan, math.nan, math.nan, 0.0]
    np.testing.assert_allclose(out["cross_history_category_count"], expected_count)
    np.testing.assert_allclose(out["cross_history_category_fraction"], expected_fraction)
    np.testing.assert_allclose(out["cross_category_in_history"], [1, 1, 1, 0, 0, math.nan, 0])
    np.testing.assert_allclose(out["cross_last_item_same_category"], [1, 0, 0, 0, 0, math.nan, 0])
    np.testing.assert_allclose(out["cross_log_item_age_hours"], np.log1p(47.0))
    np.testing.assert_allclose(out["cross_log_hours_since_last_click"], np.log1p(3.0))
    assert (out.index == frame.index).all()


def test_max_history_keeps_the_newest_items():
    frame = _frame([{"user_recent_item_ids": ["a", "c", "b"], "item_category": "x"}])
    full = cross_features(frame, LOOKUP)
    newest = cross_features(frame, LOOKUP, max_history=1)
    assert full["cross_history_category_count"].iloc[0] == 2
    assert newest["cross_history_category_count"].iloc[0] == 0  # only b (y) is kept
    assert newest["cross_history_category_fraction"].iloc[0] == 0.0
    two = cross_features(frame, LOOKUP, max_history=2)
    assert two["cross_history_category_fraction"].iloc[0] == 0.5


def test_candidate_category_falls_back_to_the_lookup():
    frame = _frame([{"user_recent_item_ids": ["a", "b"], "item_id": "c"}])
    out = cross_features(frame, LOOKUP)
    assert out["cross_history_category_count"].iloc[0] == 1


def test_missing_inputs_give_nan_not_errors():
    frame = pd.DataFrame({"user_id": ["u"], "item_id": ["a"]})
    out = cross_features(frame, LOOKUP)
    assert out.isna().all().all()


def test_row_by_row_equals_batch_equals_arrow_backed(tmp_path, make_ranking):
    """Online (one request row at a time, Python objects) == offline (the training-set parquet)."""
    frame = make_ranking(rows=400, seed=3)
    lookup = CategoryLookup.from_frame(frame)
    batch = cross_features(frame, lookup, max_history=5)
    rows = pd.concat([cross_features(frame.iloc[[i]], lookup, max_history=5) for i in range(len(frame))])
    pd.testing.assert_frame_equal(rows, batch, check_exact=True)

    path = tmp_path / "training_set.parquet"
    frame.to_parquet(path, index=False)
    offline = pd.read_parquet(path, dtype_backend="pyarrow")
    pd.testing.assert_frame_equal(cross_features(offline, lookup, max_history=5), batch, check_exact=True)
    # Online with a plain dict lookup instead of the frozen object: same numbers.
    as_dict = dict(zip(lookup.item_ids, lookup.categories))
    pd.testing.assert_frame_equal(cross_features(frame, as_dict, max_history=5), batch, check_exact=True)


def test_lookup_from_frame_takes_the_most_frequent_category_and_round_trips():
    frame = pd.DataFrame({"item_id": ["a", "a", "a", "b", "c"], "item_category": ["x", "y", "x", None, "z"]})
    lookup = CategoryLookup.from_frame(frame)
    assert dict(zip(lookup.item_ids, lookup.categories)) == {"a": "x", "c": "z"}
    again = CategoryLookup.from_dict(lookup.to_dict())
    assert again.to_dict() == lookup.to_dict()
    merged = lookup.merged({"b": "y", "a": "w"})
    assert dict(zip(merged.item_ids, merged.categories)) == {"a": "w", "b": "y", "c": "z"}


@pytest.mark.parametrize("timestamp", [NOW, NOW.tz_convert(None).as_unit("us")])
def test_timestamp_units_and_zones(timestamp):
    frame = pd.DataFrame(
        {
            "event_timestamp": [timestamp, pd.NaT],
            "item_created_ts": [int((NOW - pd.Timedelta(hours=10)).timestamp()), 0],
        }
    )
    out = cross_features(frame, {})
    assert out["cross_log_item_age_hours"].iloc[0] == pytest.approx(np.log1p(10.0))
    assert np.isnan(out["cross_log_item_age_hours"].iloc[1])
