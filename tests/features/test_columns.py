"""Columns: the request's user features without pandas, read by the encoders as training's DataFrames are."""

import numpy as np
import pandas as pd
import pytest

from recflow.features.columns import Columns


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "user_clicks_7d": np.array([1, 0, 4]),
            "user_ctr_7d": [0.5, 0.0, 0.25],
            "user_recent_item_ids": [["i1"], [], ["i2", "i3"]],
        }
    )


def test_columns_read_like_the_frame_they_came_from():
    frame = _frame()
    columns = Columns.from_pandas(frame)
    assert len(columns) == len(frame) and columns.columns == list(frame.columns)
    assert "user_ctr_7d" in columns and "user_age" not in columns
    assert isinstance(columns["user_clicks_7d"], np.ndarray) and isinstance(columns["user_id"], list)
    pd.testing.assert_frame_equal(columns.to_pandas(), frame)


def test_take_picks_rows_in_the_order_asked():
    taken = Columns.from_pandas(_frame()).take(np.array([2, 0]))
    assert len(taken) == 2
    assert taken["user_id"] == ["u3", "u1"]
    assert taken["user_clicks_7d"].tolist() == [4, 1]
    assert taken["user_recent_item_ids"] == [["i2", "i3"], ["i1"]]


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="different lengths"):
        Columns({"user_id": ["u1", "u2"], "user_age": np.array([30])})


def test_the_encoders_read_columns_as_they_read_the_frame():
    from recflow.ranking.features import epoch_seconds
    from recflow.training.features import float_values

    frame = _frame().assign(at=pd.Timestamp("2026-12-08T10:00:00Z"))
    columns = Columns.from_pandas(frame.assign(at=frame["at"].dt.tz_localize(None)))
    for name in ("user_clicks_7d", "user_ctr_7d"):
        np.testing.assert_array_equal(float_values(columns[name]), float_values(frame[name]))
    np.testing.assert_array_equal(epoch_seconds(columns["at"]), epoch_seconds(frame["at"]))
