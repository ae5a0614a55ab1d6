"""The acceptance test of the feature pipeline: point-in-time correctness.

A training set is built the way the pipeline builds it (``join_features`` with
the ``retrieval_v1`` feature service, real Feast, DuckDB offline store) for a
few hundred label rows of the tiny world, and every feature of every row is
recomputed from the raw event log by brute force in plain pandas, using only
the events strictly before 00:00 UTC of the label's day (the daily snapshot
semantics). Any leak of a label's own day, or of its future, shows up as a
mismatch; so does a wrong window, a wrong history order or a wrong default.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recflow.data.schema import UNKNOWN
from recflow.features.training_set import TrainingSetConfig, build_labels, join_features

SERVICE = "retrieval_v1"
DAY = pd.Timedelta(days=1)
PER_DAY_AND_LABEL = 12
HISTORY_LENGTH = 20  # the contract: the last 20 clicked items, newest last

INT_FEATURES = [
    *(f"user_{kind}_{w}d" for kind in ("impressions", "clicks") for w in (1, 7, 28)),
    *(f"item_{kind}_{w}d" for kind in ("impressions", "clicks") for w in (7, 28)),
    "user_last_click_ts",
    "user_age",
    "item_created_ts",
]
FLOAT_FEATURES = ["user_ctr_7d", "user_ctr_28d", "user_dwell_28d", "item_ctr_7d", "item_dwell_28d"]
STRING_FEATURES = ["user_segment", "item_category"]


def _epoch_seconds(ts: pd.Timestamp) -> int:
    return int((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1))


def _heavy_user(world) -> str:
    """The user with the most clicks: the longest histories."""
    events = world.events
    return events.loc[events["clicked"], "user_id"].value_counts().index[0]


def _midnight(world) -> pd.Timestamp:
    return world.events["event_timestamp"].min().floor("D") + 5 * DAY


def _labels(world) -> pd.DataFrame:
    """Sampled label rows over every day (clicks, random and impression negatives) plus edge cases."""
    events = world.events
    catalog = world.items["item_id"].to_numpy()
    labels = build_labels(events, catalog, TrainingSetConfig(negatives_per_positive=2.0, seed=7))
    impressions = events.loc[~events["clicked"], ["user_id", "item_id", "event_timestamp"]].assign(label=0.0)
    pool = pd.concat(
        [labels.assign(kind=labels["label"].map({1.0: "click", 0.0: "random"})), impressions.assign(kind="impression")],
        ignore_index=True,
    )
    pool = pool.assign(day=pool["event_timestamp"].dt.floor("D"))
    sampled = pool.sample(frac=1.0, random_state=0).groupby(["day", "kind"]).head(PER_DAY_AND_LABEL)

    start = events["event_timestamp"].min().floor("D")
    by_user = events.groupby("user_id")
    heavy = _heavy_user(world)
    heavy_clicks = events[events["clicked"] & (events["user_id"] == heavy)]["event_timestamp"]
    idle = sorted(set(world.users["user_id"]) - set(by_user.groups))  # users who never saw anything
    assert idle, "the tiny world is expected to have users without any event"
    newcomer = world.users.sort_values("signup_at").iloc[-1]  # signed up last, inside the window
    new_items = world.items[world.items["created_at"] > start].sort_values("created_at")
    late_item = new_items.iloc[len(new_items) // 2]
    mid = _midnight(world)
    edge = pd.DataFrame(
        [
            # Exactly at midnight: the snapshot stamped at this instant is visible
            # (Feast joins rows with timestamp <= the entity's) and holds the
            # previous days only.
            (heavy, "i0", mid),
            (heavy, "i0", mid - pd.Timedelta(microseconds=1)),
            # At the instant of the heavy user's last click: it must not count.
            (heavy, "i1", heavy_clicks.max()),
            # Before anything happened: no daily row exists yet.
            (heavy, "i2", start + pd.Timedelta(hours=12)),
            # A user who never saw an item: zeros and an empty history.
            (idle[0], "i3", start + 8 * DAY + pd.Timedelta(hours=3)),
            # A user and an item before they existed: "unknown" profiles.
            (newcomer["user_id"], late_item["item_id"], min(newcomer["signup_at"], late_item["created_at"]) - pd.Timedelta(minutes=1)),
            # Ids the store has never heard of.
            ("u_nobody", "i_nothing", start + 7 * DAY),
        ],
        columns=["user_id", "item_id", "event_timestamp"],
    ).assign(label=0.0)
    edge["event_timestamp"] = pd.to_datetime(edge["event_timestamp"], utc=True).astype(events["event_timestamp"].dtype)
    rows = pd.concat([sampled[["user_id", "item_id", "event_timestamp", "label"]], edge], ignore_index=True)
    return rows.assign(row=np.arange(len(rows)))


def _window(frame: pd.DataFrame, cutoff: pd.Timestamp, days: int) -> pd.DataFrame:
    return frame[(frame["event_timestamp"] >= cutoff - days * DAY) & (frame["event_timestamp"] < cutoff)]


def _brute_force(world, labels: pd.DataFrame) -> pd.DataFrame:
    """Every feature of every label row, from the raw tables, with plain pandas."""
    events = world.events.sort_values("event_timestamp", kind="stable")
    by_user = {k: g for k, g in events.groupby("user_id")}
    by_item = {k: g for k, g in events.groupby("item_id")}
    empty = events.iloc[:0]
    users = world.users.set_index("user_id")
    items = world.items.set_index("item_id")
    out = []
    for row in labels.itertuples(index=False):
        t = row.event_timestamp
        cutoff = t.floor("D")  # only the days strictly before the label's day count
        expected = {"row": row.row}
        for prefix, frame, windows in (
            ("user", by_user.get(row.user_id, empty), (1, 7, 28)),
            ("item", by_item.get(row.item_id, empty), (7, 28)),
        ):
            for days in windows:
                window = _window(frame, cutoff, days)
                impressions, clicks = len(window), int(window["clicked"].sum())
                expected[f"{prefix}_impressions_{days}d"] = impressions
                expected[f"{prefix}_clicks_{days}d"] = clicks
                if days > 1:
                    expected[f"{prefix}_ctr_{days}d"] = clicks / impressions if impressions else 0.0
                if days == 28:
                    dwell = window.loc[window["clicked"], "dwell_seconds"].sum()
                    expected[f"{prefix}_dwell_28d"] = dwell / clicks if clicks else 0.0
        # user_ctr_28d is in the service; item_ctr_28d is not.
        expected.pop("item_ctr_28d", None)
        history = by_user.get(row.user_id, empty)
        history = history[history["clicked"] & (history["event_timestamp"] < cutoff)]
        expected["user_recent_item_ids"] = list(history["item_id"])[-HISTORY_LENGTH:]
        expected["user_last_click_ts"] = _epoch_seconds(history["event_timestamp"].max()) if len(history) else 0
        if row.user_id in users.index and users.at[row.user_id, "signup_at"] <= t:
            expected["user_segment"] = users.at[row.user_id, "segment"]
            expected["user_age"] = int(users.at[row.user_id, "age"])
        else:
            expected["user_segment"], expected["user_age"] = UNKNOWN, -1
        if row.item_id in items.index and items.at[row.item_id, "created_at"] <= t:
            expected["item_category"] = items.at[row.item_id, "category"]
            expected["item_created_ts"] = _epoch_seconds(items.at[row.item_id, "created_at"])
        else:
            expected["item_category"], expected["item_created_ts"] = UNKNOWN, 0
        out.append(expected)
    return pd.DataFrame(out).set_index("row").sort_index()


@pytest.fixture(scope="module")
def joined(feature_env):
    labels = _labels(feature_env.world)
    training = join_features(feature_env.store(), labels, SERVICE)
    return labels, training.set_index("row").sort_index()


def test_training_set_has_every_label_row_once(joined):
    labels, training = joined
    assert len(labels) > 250
    assert training.index.tolist() == sorted(labels["row"])
    pd.testing.assert_frame_equal(
        training[["user_id", "item_id", "event_timestamp", "label"]],
        labels.set_index("row").sort_index()[["user_id", "item_id", "event_timestamp", "label"]],
        check_dtype=False,
    )
    # The sample spans every day, both classes and the no-history case.
    assert training["event_timestamp"].dt.floor("D").nunique() == 10
    assert set(training["label"]) == {0.0, 1.0}
    no_history = training["user_recent_item_ids"].map(len) == 0
    assert no_history.sum() >= 20 and (~no_history).sum() >= 100
    # Some histories are long enough to be cut to the last 20.
    assert (training["user_recent_item_ids"].map(len) == HISTORY_LENGTH).any()


def test_every_feature_equals_the_brute_force_snapshot(feature_env, joined):
    labels, training = joined
    expected = _brute_force(feature_env.world, labels)
    assert training.index.equals(expected.index)
    problems = []
    for column in expected.columns:
        got, want = training[column], expected[column]
        if column in INT_FEATURES:
            bad = got.astype("float64").to_numpy() != want.astype("float64").to_numpy()
        elif column in FLOAT_FEATURES:
            bad = ~np.isclose(got.astype("float64"), want.astype("float64"), rtol=1e-9, atol=1e-12)
        elif column in STRING_FEATURES:
            bad = got.to_numpy() != want.to_numpy()
        else:  # user_recent_item_ids
            bad = np.array([list(g) != list(w) for g, w in zip(got, want)])
        for row in training.index[bad][:3]:
            problems.append(f"{column} row {row} {training.loc[row, ['user_id', 'item_id', 'event_timestamp']].tolist()}: "
                            f"got {got[row]!r}, want {want[row]!r}")
        if bad.any():
            problems.append(f"{column}: {int(bad.sum())} of {len(bad)} rows differ")
    assert not problems, "\n".join(problems)
    service_columns = set(training.columns) - {"user_id", "item_id", "event_timestamp", "label"}
    assert service_columns == set(expected.columns), "the brute force must cover every feature of the service"


def test_no_feature_derives_from_the_label_instant_or_later(feature_env, joined):
    labels, training = joined
    events = feature_env.world.events
    clicks = events[events["clicked"]]
    first_click = clicks.groupby(["user_id", "item_id"])["event_timestamp"].min()
    for row in training.itertuples():
        t = row.event_timestamp
        t_seconds = (t - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        for item in row.user_recent_item_ids:
            assert first_click[(row.user_id, item)] < t, (row.Index, item)
        assert row.user_last_click_ts < t_seconds
        # Not even the earlier part of the label's own day is visible.
        assert row.user_last_click_ts < (t.floor("D") - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        user_clicks = clicks[(clicks["user_id"] == row.user_id) & (clicks["event_timestamp"] < t)]
        assert row.user_clicks_28d <= len(user_clicks)
        assert len(row.user_recent_item_ids) <= min(HISTORY_LENGTH, len(user_clicks))
    positives = training[training["label"] == 1.0]
    # A positive's own click is at its timestamp: it is never in its history
    # unless the user clicked the same item on an earlier day.
    for row in positives.itertuples():
        if row.item_id in row.user_recent_item_ids:
            assert first_click[(row.user_id, row.item_id)].floor("D") < row.event_timestamp.floor("D")


def test_rows_without_history_get_the_defaults(feature_env, joined):
    labels, training = joined
    start = feature_env.world.events["event_timestamp"].min().floor("D")
    first_day = training[training["event_timestamp"] < start + DAY]
    assert len(first_day) > 0
    for column in ("user_clicks_7d", "user_impressions_28d", "user_ctr_28d", "item_clicks_28d", "user_last_click_ts"):
        assert (first_day[column] == 0).all(), column
    assert all(v == [] for v in first_day["user_recent_item_ids"])
    unknown = training[training["user_id"] == "u_nobody"].iloc[0]
    assert unknown["user_segment"] == UNKNOWN and unknown["item_category"] == UNKNOWN
    assert unknown["user_recent_item_ids"] == [] and unknown["user_clicks_7d"] == 0
    # An entity row that predates its user's signup and its item's creation.
    before = training[(training["user_segment"] == UNKNOWN) & (training["user_id"] != "u_nobody")]
    assert len(before) == 1 and before["item_category"].iloc[0] == UNKNOWN


def test_midnight_snapshot_is_the_previous_days(feature_env, joined):
    """A label at 00:00 sees the snapshot stamped at that instant (days before), one at 23:59:59.999999 the one before."""
    labels, training = joined
    heavy, midnight = _heavy_user(feature_env.world), _midnight(feature_env.world)
    rows = training[(training["item_id"] == "i0") & (training["user_id"] == heavy)].set_index("event_timestamp")
    at_midnight = rows.loc[midnight].to_dict() | {"event_timestamp": midnight}
    just_before = rows.loc[midnight - pd.Timedelta(microseconds=1)]
    events = feature_env.world.events
    user = events[events["user_id"] == at_midnight["user_id"]]
    day = at_midnight["event_timestamp"] - DAY
    previous = user[(user["event_timestamp"] >= day) & (user["event_timestamp"] < at_midnight["event_timestamp"])]
    assert at_midnight["user_impressions_1d"] == len(previous)
    earlier = user[(user["event_timestamp"] >= day - DAY) & (user["event_timestamp"] < day)]
    assert just_before["user_impressions_1d"] == len(earlier)
