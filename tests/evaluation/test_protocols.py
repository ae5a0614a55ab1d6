"""Properties of the two split protocols on small hand-made event logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recflow.evaluation.protocols import stratified_split, time_split

START = pd.Timestamp("2024-03-01", tz="UTC")


def _events(rows: list[tuple[str, str, str, bool]]) -> pd.DataFrame:
    """Rows of (user, item, timestamp offset like '2d 5h', clicked) in the canonical schema."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "offset", "clicked"])
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(frame))],
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "event_timestamp": START + pd.to_timedelta(frame["offset"]),
            "clicked": frame["clicked"].astype(bool),
            "dwell_seconds": np.where(frame["clicked"], 30.0, 0.0),
            "rating": np.nan,
        }
    )


def _random_log(n_users: int = 60, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n_pos = int(rng.integers(0, 40))
        for i in rng.choice(500, size=n_pos + 10, replace=False):
            rows.append((f"u{u:03d}", f"i{i:03d}", f"{int(rng.integers(0, 30 * 24 * 60))}min", len(rows) % 3 > 0))
    return _events(rows)


LOG = _events(
    [
        ("a", "x", "0d 1h", True),
        ("a", "y", "1d 2h", False),
        ("b", "x", "2d 3h", True),
        ("a", "z", "3d 0h", True),  # exactly at the 2-day cutoff: test
        ("a", "w", "3d 4h", False),  # impression after cutoff: neither
        ("b", "y", "4d 23h", True),
        ("c", "y", "4d 1h", True),  # user never seen in train: dropped
    ]
)


def test_time_split_cutoff_and_membership():
    split = time_split(LOG, test_days=2)
    assert split.protocol == "time"
    # Last event on day 4 (2024-03-05); the day after starts 03-06; minus 2 days.
    assert split.cutoff == pd.Timestamp("2024-03-04", tz="UTC")
    assert sorted(split.train["event_id"]) == ["e0", "e1", "e2"]
    assert sorted(split.test["event_id"]) == ["e3", "e5"]
    assert (split.train["event_timestamp"] < split.cutoff).all()
    assert (split.test["event_timestamp"] >= split.cutoff).all()
    assert split.test["clicked"].all()
    assert set(split.test["user_id"]) <= set(split.train["user_id"])


def test_time_split_properties_on_a_random_log():
    split = time_split(_random_log(), test_days=7)
    assert split.cutoff.hour == 0 and split.cutoff.minute == 0
    assert (split.train["event_timestamp"] < split.cutoff).all()
    assert (split.test["event_timestamp"] >= split.cutoff).all()
    assert split.test["clicked"].all()
    assert set(split.test["user_id"]) <= set(split.train["user_id"])
    assert not split.train["clicked"].all()  # impressions stay in train


def test_time_split_errors():
    with pytest.raises(ValueError, match="test_days must be >= 1"):
        time_split(LOG, test_days=0)
    with pytest.raises(ValueError, match="no training event"):
        time_split(LOG, test_days=5)
    only_impressions_late = LOG[~LOG["event_id"].isin(["e3", "e5"])]
    with pytest.raises(ValueError, match="no test event"):
        time_split(only_impressions_late, test_days=2)
    with pytest.raises(ValueError, match="timezone-aware"):
        time_split(LOG.assign(event_timestamp=LOG["event_timestamp"].dt.tz_localize(None)), test_days=2)


def test_stratified_split_is_reproducible_and_order_independent():
    log = _random_log()
    first = stratified_split(log, seed=42)
    again = stratified_split(log.sample(frac=1.0, random_state=1), seed=42)
    assert sorted(first.test["event_id"]) == sorted(again.test["event_id"])
    other = stratified_split(log, seed=43)
    assert sorted(first.test["event_id"]) != sorted(other.test["event_id"])


def test_stratified_split_properties():
    log = _random_log()
    split = stratified_split(log, ratio=0.75, seed=42)
    assert split.protocol == "stratified"
    assert split.cutoff == log["event_timestamp"].max()
    assert len(split.train) + len(split.test) == len(log)
    assert set(split.train["event_id"]).isdisjoint(split.test["event_id"])
    assert split.test["clicked"].all()  # non-clicked rows stay in train
    assert set(split.test["user_id"]) <= set(split.train["user_id"])

    positives = log[log["clicked"]].groupby("user_id").size()
    tested = split.test.groupby("user_id").size().reindex(positives.index, fill_value=0)
    for user, n in positives.items():
        if n < 2:
            assert tested[user] == 0
        else:
            expected_train = min(max(int(np.floor(0.75 * n + 0.5)), 1), n - 1)
            assert tested[user] == n - expected_train
    many = positives[positives >= 8].index
    share = tested[many] / positives[many]
    assert share.between(0.15, 0.35).all()


def test_stratified_split_small_users():
    log = _events(
        [
            ("a", "x", "0d", True),  # a single positive: stays in train
            ("a", "y", "1d", False),
            ("b", "x", "0d", True),  # two positives: one each side
            ("b", "y", "1d", True),
        ]
    )
    split = stratified_split(log)
    assert split.test["user_id"].tolist() == ["b"]
    assert sorted(split.train["event_id"]) == sorted(set(log["event_id"]) - set(split.test["event_id"]))


def test_stratified_split_errors():
    with pytest.raises(ValueError, match="ratio"):
        stratified_split(LOG, ratio=1.0)
    with pytest.raises(ValueError, match="no test event"):
        stratified_split(_events([("a", "x", "0d", True), ("b", "x", "0d", True)]))


def test_summary_counts():
    summary = time_split(LOG, test_days=2).summary()
    assert summary == {
        "protocol": "time",
        "cutoff": "2024-03-04T00:00:00+00:00",
        "train_rows": 3,
        "train_positives": 2,
        "train_users": 2,
        "train_items": 2,
        "test_rows": 2,
        "test_users": 2,
        "test_items": 2,
    }
