"""The synthetic world: determinism, schema, realism of the log, the oracle, drift, I/O."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from recflow.data.dataset import Dataset, to_table
from recflow.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA
from recflow.data.world import (
    SCALES,
    GroundTruth,
    WorldConfig,
    expected_num_events,
    generate_world,
    world_config,
    world_ground_truth,
    write_world,
)


@pytest.fixture(scope="module")
def world():
    return generate_world(SCALES["tiny"])


def event_days(world) -> np.ndarray:
    start = pd.Timestamp(world.ground_truth.config.start_date, tz="UTC")
    return ((world.events["event_timestamp"] - start) // pd.Timedelta(days=1)).to_numpy()


def event_affinity(world) -> np.ndarray:
    """The oracle's click probability of every logged impression."""
    truth, events = world.ground_truth, world.events
    result = np.empty(len(events))
    for day, index in events.groupby(event_days(world)).indices.items():
        users, user_pos = np.unique(events["user_id"].to_numpy()[index], return_inverse=True)
        items, item_pos = np.unique(events["item_id"].to_numpy()[index], return_inverse=True)
        result[index] = truth.affinity(users, items, int(day))[user_pos, item_pos]
    return result


def post_drift_click_categories(config: WorldConfig) -> pd.Series:
    world = generate_world(config)
    clicks = world.events[(event_days(world) >= config.drift_start_day) & world.events["clicked"]]
    category = world.items.set_index("item_id")["category"]
    return category.loc[clicks["item_id"]].value_counts(normalize=True)


def test_same_seed_same_world_and_different_seed_different_world(world):
    again = generate_world(SCALES["tiny"])
    pd.testing.assert_frame_equal(world.events, again.events)
    pd.testing.assert_frame_equal(world.items, again.items)
    pd.testing.assert_frame_equal(world.users, again.users)
    np.testing.assert_array_equal(world.ground_truth.user_taste, again.ground_truth.user_taste)
    other = generate_world(world_config("tiny", seed=1))
    assert not world.events[["user_id", "item_id", "clicked"]].equals(other.events[["user_id", "item_id", "clicked"]])


def test_the_oracle_alone_is_the_generated_worlds_oracle(world):
    alone = world_ground_truth(SCALES["tiny"])
    for name in ("user_ids", "item_ids", "user_taste", "user_drift_taste", "user_bias", "item_vectors", "item_popularity"):
        np.testing.assert_array_equal(getattr(alone, name), getattr(world.ground_truth, name), err_msg=name)


@pytest.mark.parametrize(
    ("name", "schema"), [("events", EVENTS_SCHEMA), ("items", ITEMS_SCHEMA), ("users", USERS_SCHEMA)]
)
def test_frames_match_canonical_schema(world, name, schema):
    frame = getattr(world, name)
    assert list(frame.columns) == schema.names
    expected = schema.empty_table().to_pandas().dtypes
    assert frame.dtypes.to_dict() == expected.to_dict()
    to_table(frame, schema)  # nullability and types accepted by Arrow


def test_ids_titles_and_categories_are_strings(world):
    assert world.users["user_id"].str.fullmatch(r"u\d+").all()
    assert world.items["item_id"].str.fullmatch(r"i\d+").all()
    assert world.items["category"].str.fullmatch(r"cat_\d{2}").all()
    assert (world.items["title"] == "item " + world.items["item_id"].str[1:]).all()
    assert world.events["rating"].isna().all()
    assert world.users["segment"].nunique() > 1
    assert world.users["age"].between(16, 85).all()


def test_no_event_before_item_creation_or_user_signup(world):
    events = world.events
    created = world.items.set_index("item_id")["created_at"].loc[events["item_id"]].to_numpy()
    signup = world.users.set_index("user_id")["signup_at"].loc[events["user_id"]].to_numpy()
    assert (events["event_timestamp"].to_numpy() > created).all()
    assert (events["event_timestamp"].to_numpy() > signup).all()


def test_items_arrive_during_the_window_and_get_shown(world):
    start = pd.Timestamp(world.ground_truth.config.start_date, tz="UTC")
    new_items = world.items.loc[world.items["created_at"] >= start, "item_id"]
    assert 0 < len(new_items) < len(world.items)
    assert world.events["item_id"].isin(new_items).any()


def test_events_are_unique_and_inside_the_window(world):
    events = world.events
    assert events["event_id"].is_unique
    assert not events.duplicated(["user_id", "item_id", "event_timestamp"]).any()
    days = event_days(world)
    assert days.min() == 0 and days.max() == world.ground_truth.config.days - 1
    # Spread over the day, not bunched at midnight.
    assert events["event_timestamp"].dt.hour.nunique() == 24


def test_click_through_rate_is_realistic(world):
    assert 0.03 <= world.events["clicked"].mean() <= 0.10


def test_dwell_only_on_clicks_and_positive(world):
    events = world.events
    assert (events.loc[~events["clicked"], "dwell_seconds"] == 0).all()
    assert (events.loc[events["clicked"], "dwell_seconds"] > 0).all()


def test_popularity_is_long_tailed(world):
    clicks = world.events.loc[world.events["clicked"], "item_id"].value_counts()
    top = clicks.iloc[: len(world.items) // 10].sum()
    assert top / clicks.sum() > 0.4


def test_user_activity_is_heavy_tailed(world):
    per_user = world.events["user_id"].value_counts()
    assert per_user.iloc[: len(world.users) // 10].sum() / len(world.events) > 0.3
    assert per_user.max() > 5 * per_user.median()


def test_clicks_follow_the_ground_truth_affinity(world):
    affinity = event_affinity(world)
    clicked = world.events["clicked"].to_numpy()
    assert affinity[clicked].mean() > 1.5 * affinity[~clicked].mean()
    # The oracle's expected CTR matches the realised one.
    assert abs(affinity.mean() - clicked.mean()) < 0.01


def test_affinity_shape_range_and_unknown_ids(world):
    truth = world.ground_truth
    users, items = ["u0", "u5", "u7"], ["i3", "i1"]
    values = truth.affinity(users, items, day=0)
    assert values.shape == (3, 2) and values.dtype == np.float64
    assert ((values > 0) & (values < 1)).all()
    np.testing.assert_allclose(values[1, 0], truth.affinity(["u5"], ["i3"], day=0)[0, 0])
    with pytest.raises(KeyError, match="u_nope"):
        truth.affinity(["u0", "u_nope"], items, day=0)
    with pytest.raises(KeyError, match="i_nope"):
        truth.affinity(users, ["i_nope"], day=0)


def test_affinity_changes_only_from_the_drift_day(world):
    truth = world.ground_truth
    drift_day = truth.config.drift_start_day
    users, items = truth.user_ids[:50], truth.item_ids
    np.testing.assert_array_equal(truth.affinity(users, items, 0), truth.affinity(users, items, drift_day - 1))
    assert not np.allclose(truth.affinity(users, items, 0), truth.affinity(users, items, drift_day))


def test_day_index(world):
    truth = world.ground_truth
    start = pd.Timestamp(truth.config.start_date, tz="UTC")
    assert truth.day_index(start) == 0
    assert truth.day_index(start + pd.Timedelta(days=3, hours=23)) == 3
    assert truth.day_index(start - pd.Timedelta(microseconds=1)) == -1
    assert truth.day_index(dt.datetime(2026, 1, 2, 12)) == 1  # naive = UTC
    assert truth.day_index(world.events["event_timestamp"].iloc[-1]) == truth.config.days - 1


def test_drift_shifts_the_categories_of_clicks():
    drifting = world_config("tiny", drift_start_day=4, drift_strength=0.8)
    steady = world_config("tiny", drift_start_day=4, drift_strength=0.0)
    with_drift = generate_world(drifting)
    without = generate_world(steady)
    # Same seed: identical until drift starts.
    before = event_days(with_drift) < 4
    pd.testing.assert_frame_equal(with_drift.events[before], without.events[event_days(without) < 4])
    shares = post_drift_click_categories(drifting)
    baseline = post_drift_click_categories(steady)
    total_variation = 0.5 * shares.sub(baseline, fill_value=0).abs().sum()
    assert total_variation > 0.2


def test_expected_event_count_matches_generation_and_demo_is_about_a_million():
    assert 0.95e6 < expected_num_events(SCALES["demo"]) < 1.05e6
    assert 10e3 < expected_num_events(SCALES["tiny"]) < 30e3
    assert 9.5e6 < expected_num_events(SCALES["bench"]) < 10.5e6
    demo = generate_world(SCALES["demo"])
    assert 0.9e6 < len(demo.events) < 1.05e6
    assert demo.items["item_id"].nunique() == 5_000 and len(demo.users) == 20_000


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError, match="n_user"):
        world_config("tiny", n_user=5)
    with pytest.raises(ValidationError, match="n_users"):
        world_config("tiny", n_users=-1)
    with pytest.raises(ValidationError, match="drift_strength"):
        world_config("tiny", drift_strength=1.5)
    with pytest.raises(ValidationError, match="drift_start_day"):
        world_config("tiny", drift_start_day=10)
    with pytest.raises(ValidationError, match="drift_start_day"):
        world_config("tiny", drift_start_day=None)
    with pytest.raises(ValidationError, match="n_categories"):
        world_config("tiny", n_categories=151)
    with pytest.raises(ValidationError, match="start_date"):
        world_config("tiny", start_date=dt.date.today() + dt.timedelta(days=30))
    with pytest.raises(ValueError, match="tiny"):
        world_config("huge")
    with pytest.raises(ValidationError, match="frozen"):
        SCALES["tiny"].seed = 3


def test_write_world_round_trips(tmp_path, world):
    config = SCALES["tiny"]
    dataset = write_world(config, tmp_path / "world")
    reopened = Dataset(tmp_path / "world")
    manifest = reopened.manifest
    assert manifest["source"] == "world" and manifest["scale"] == "tiny" and manifest["seed"] == config.seed
    assert WorldConfig.model_validate(manifest["config"]) == config
    assert manifest["num_events"] == len(world.events)
    assert len(dataset.days()) == config.days

    events = reopened.read_events().set_index("event_id").loc[world.events["event_id"]].reset_index()
    pd.testing.assert_frame_equal(events, world.events)
    pd.testing.assert_frame_equal(reopened.read_items(), world.items)
    pd.testing.assert_frame_equal(reopened.read_users(), world.users)

    truth = GroundTruth.load(reopened.ground_truth_dir)
    assert truth.config == config
    users, items = world.ground_truth.user_ids[:20], world.ground_truth.item_ids
    for day in (0, config.drift_start_day):
        np.testing.assert_array_equal(truth.affinity(users, items, day), world.ground_truth.affinity(users, items, day))

    with pytest.raises(FileExistsError):
        write_world(config, tmp_path / "world")
    write_world(config, tmp_path / "world", overwrite=True)
