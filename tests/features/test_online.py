"""The online store after ``materialize``: serving reads the newest snapshot.

``materialize`` loads the newest offline row of every entity into the SQLite
online store, up to the end of the log (the instant the last snapshot is
stamped with). Reading the ``retrieval_v1`` service online for a known user
and item must give exactly that last offline row, and the same values the
offline point-in-time join gives at that instant: training and serving agree.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from recflow.features import store
from recflow.features.compute import FEEDBACK_SEQ_COLUMN
from recflow.features.online import UserFeatureReader
from recflow.features.training_set import fill_missing, join_features, service_features

SERVICE = "retrieval_v1"


@pytest.fixture(scope="module")
def online(feature_env):
    last_day = feature_env.dataset.days()[-1]
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    result = store.materialize(feature_env.repo, end)
    assert result["seconds"] >= 0
    return feature_env.store(), pd.Timestamp(end)


def _newest(frame: pd.DataFrame, key: str, value: str) -> pd.Series:
    rows = frame[frame[key] == value].sort_values("event_timestamp")
    return rows.iloc[-1]


def _known_pair(env) -> tuple[str, str]:
    """The most active user and the most shown item: both have rows in every table."""
    events = env.world.events
    return events.loc[events["clicked"], "user_id"].value_counts().index[0], events["item_id"].value_counts().index[0]


def _read_online(fs, user: str, item: str) -> dict:
    response = fs.get_online_features(
        features=fs.get_feature_service(SERVICE), entity_rows=[{"user_id": user, "item_id": item}]
    ).to_dict()
    return {name: values[0] for name, values in response.items()}


def test_online_values_are_the_newest_offline_rows(feature_env, online):
    fs, end = online
    user, item = _known_pair(feature_env)
    got = _read_online(fs, user, item)
    expected = {}
    for table, key, value in (
        ("user_engagement", "user_id", user),
        ("user_history", "user_id", user),
        ("user_profile", "user_id", user),
        ("item_stats", "item_id", item),
        ("item_profile", "item_id", item),
    ):
        row = _newest(feature_env.table(table), key, value)
        if table in ("user_engagement", "item_stats"):
            assert row["event_timestamp"] == end, f"{table}: the newest snapshot is stamped at the end of the log"
        expected.update(row.drop([key, "event_timestamp"]).to_dict())
    # Bookkeeping of the feedback ingestion: in the history table, never in a service.
    assert expected.pop(FEEDBACK_SEQ_COLUMN) == 0
    features = service_features(fs, SERVICE)
    assert set(expected) == set(features)
    for name, want in expected.items():
        if isinstance(want, (list, np.ndarray)):
            assert list(got[name]) == list(want), name
            assert 0 < len(want) <= 20
        elif isinstance(want, float):
            assert got[name] == pytest.approx(want, rel=1e-12), name
        else:
            assert got[name] == want, name
    assert got["user_id"] == user and got["item_id"] == item


def test_online_equals_the_offline_join_at_the_end_of_the_log(feature_env, online):
    fs, end = online
    user, item = _known_pair(feature_env)
    idle = sorted(set(feature_env.world.users["user_id"]) - set(feature_env.world.events["user_id"]))[0]
    features = service_features(fs, SERVICE)
    rows = pd.DataFrame({"user_id": [user, idle], "item_id": [item, item], "event_timestamp": [end, end]})
    offline = join_features(fs, rows, SERVICE).set_index("user_id")
    for who in (user, idle):
        served = fill_missing(pd.DataFrame([_read_online(fs, who, item)]), features).iloc[0]
        for name in features:
            want, got = offline.loc[who, name], served[name]
            if isinstance(want, (list, np.ndarray)):
                assert list(got) == list(want), (who, name)
            elif isinstance(want, str):
                assert got == want, (who, name)
            else:
                assert float(got) == pytest.approx(float(want), rel=1e-12), (who, name)
    # A user who never saw an item gets nothing online, and the one defaulting
    # rule then gives what the offline join gives: zeros and an empty history.
    raw = _read_online(fs, idle, item)
    assert raw["user_clicks_7d"] is None and raw["user_recent_item_ids"] is None
    assert offline.loc[idle, "user_recent_item_ids"] == [] and offline.loc[idle, "user_clicks_7d"] == 0


def test_the_serving_read_gives_the_frame_of_feasts_public_read(feature_env, online):
    """The model server's reader (one provider read per view, columns built by hand) gives the frame,
    dtypes included, that Feast's ``get_online_features`` gives through the same defaulting rule:
    for active users alone (nothing to fill), and with a user who never clicked (a profile row,
    no engagement or history) and one the store has never seen."""
    fs, _ = online
    clicked = feature_env.world.events.loc[feature_env.world.events["clicked"], "user_id"]
    known = clicked.value_counts().index[:3].astype(str).tolist()
    idle = sorted(set(feature_env.world.users["user_id"]) - set(feature_env.world.events["user_id"]))[0]
    reader = UserFeatureReader(fs, SERVICE)
    for users in (known, [known[0], idle, "no-such-user", known[1]]):
        public = fs.get_online_features(
            features=[f"{view.name}:{name}" for view, names in reader.views for name in names],
            entity_rows=[{"user_id": user} for user in users],
        ).to_df()
        expected = fill_missing(public[["user_id", *reader.names]], reader.types)
        read = reader.read(users)
        pd.testing.assert_frame_equal(read.columns.to_pandas(), expected, check_exact=True)
        assert read.known.tolist() == [user != "no-such-user" for user in users]


def test_an_applied_copy_of_a_repo_leaves_the_source_store_alone(workspace, tmp_path):
    """A plain copy's registry names the source's online store; applying it would drop the source's tables."""
    copy = store.copy_repo(workspace.feature_repo, tmp_path / "copy")
    store.feast_apply(copy)  # what a pipeline run in the copy does
    users = workspace.known_users()[:3]
    for repo in (workspace.feature_repo, copy):
        read = store.get_store(repo).get_online_features(
            features=["user_profile:user_segment"], entity_rows=[{"user_id": user} for user in users]
        ).to_dict()
        assert all(segment is not None for segment in read["user_segment"]), repo
