"""The row-count guard of ``join_features``, against the real Feast offline stores.

Feast's older dask ("file") offline store silently drops an entity row when
the entity has feature rows, but none inside ``[t - ttl, t]`` for the row's
timestamp ``t``: its left join keeps the entity's feature rows, its TTL filter
then removes every one of them, and the row is gone (an entity with no
feature row at all survives with nulls). Found here with Feast 0.67 / dask
2026.8:

* entity rows stamped before the first daily snapshot of their user or item
  (e.g. a label on the first day of the log) vanish;
* entity rows whose newest feature row is older than a view's TTL vanish;
* (and, with the project's views, an entity that has no row at all in a
  multi-file source makes the dask store raise NotImplementedError on its
  null-timestamp sort rather than return anything.)

``join_features`` must turn a silent drop into a loud ``RowsVanished``. The
DuckDB store, which the project uses, keeps every row for the same input.
"""

from __future__ import annotations

import shutil
import textwrap

import pandas as pd
import pytest

from recflow.features import store
from recflow.features.training_set import RowsVanished, join_features

SERVICE = "retrieval_v1"
# dask's own deprecation noise from inside the file store.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _use_file_offline_store(yaml_path) -> None:
    text = yaml_path.read_text()
    assert "type: duckdb" in text
    yaml_path.write_text(text.replace("type: duckdb", "type: file"))


@pytest.fixture(scope="module")
def dask_store(feature_env, tmp_path_factory):
    """A second copy of the project's repo whose offline store is the dask one."""
    repo = store.prepare_repo(tmp_path_factory.mktemp("dask") / "feature_repo")
    _use_file_offline_store(repo / "feature_store.yaml")
    shutil.copytree(feature_env.offline_root, store.offline_root(repo))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RECFLOW_OFFLINE_ROOT", raising=False)
        store.feast_apply(repo)
    fs = store.get_store(repo)
    assert fs.config.offline_store.type == "file"
    return fs


@pytest.fixture(scope="module")
def early_and_late_rows(feature_env) -> pd.DataFrame:
    """Users and items that have rows in every view of the service, each asked
    for at a late instant (rows exist before it) and on the log's first day,
    before their first daily snapshot (stamped at the end of that day)."""
    env = feature_env
    start = env.world.events["event_timestamp"].min().floor("D")
    first_day = start + pd.Timedelta(days=1)
    users = set(env.table("user_engagement")["user_id"]) & set(env.table("user_history")["user_id"])
    items = set(env.table("item_stats")["item_id"])
    old_users = env.world.users.loc[env.world.users["signup_at"] < start, "user_id"]
    old_items = env.world.items.loc[env.world.items["created_at"] < start, "item_id"]
    users = sorted(users & set(old_users))[:3]
    items = sorted(items & set(old_items))[:3]
    late = start + pd.Timedelta(days=9, hours=12)
    early = start + pd.Timedelta(hours=12)
    rows = pd.DataFrame(
        {
            "user_id": users + users,
            "item_id": items + items,
            "event_timestamp": [late] * 3 + [early] * 3,
        }
    )
    # Premise: every early row predates its entities' first daily rows.
    for table, key in (("user_engagement", "user_id"), ("user_history", "user_id"), ("item_stats", "item_id")):
        first = env.table(table).groupby(key)["event_timestamp"].min()
        assert (first.loc[rows[key]].to_numpy() >= first_day).all()
    return rows


def test_dask_store_silently_drops_rows_before_the_first_snapshot(dask_store, early_and_late_rows):
    service = dask_store.get_feature_service(SERVICE)
    raw = dask_store.get_historical_features(entity_df=early_and_late_rows, features=service).to_df()
    # The premise of the guard: the dask store really loses rows, without an error.
    assert len(raw) < len(early_and_late_rows)
    late = early_and_late_rows["event_timestamp"].max()
    assert len(raw) == 3 and (raw["event_timestamp"] == late).all()


def test_join_features_raises_rows_vanished_on_the_dask_store(dask_store, early_and_late_rows):
    with pytest.raises(RowsVanished, match=r"Feast returned 3 rows for 6 entity rows") as caught:
        join_features(dask_store, early_and_late_rows, SERVICE)
    assert SERVICE in str(caught.value)


def test_duckdb_store_keeps_every_row_for_the_same_input(feature_env, early_and_late_rows):
    joined = join_features(feature_env.store(), early_and_late_rows, SERVICE)
    assert len(joined) == len(early_and_late_rows)
    early = joined[joined["event_timestamp"] == early_and_late_rows["event_timestamp"].min()]
    assert len(early) == 3
    # Nothing computed yet at that instant: defaults, but the profiles exist.
    assert (early[["user_clicks_7d", "user_impressions_28d", "item_clicks_28d", "user_last_click_ts"]] == 0).all().all()
    assert all(v == [] for v in early["user_recent_item_ids"])
    assert (early["user_segment"] != "unknown").all() and (early["item_category"] != "unknown").all()
    late = joined[joined["event_timestamp"] == early_and_late_rows["event_timestamp"].max()]
    assert (late["user_impressions_28d"] > 0).all() and all(len(v) > 0 for v in late["user_recent_item_ids"])


# --- TTL: the other input that makes the dask store drop rows ---------------------------------

SHORT_TTL_DEFINITIONS = """\
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Int64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
engagement = FileSource(name="engagement_source", path={path!r}, timestamp_field="event_timestamp")
short_ttl = FeatureView(
    name="user_engagement_short_ttl",
    entities=[user],
    ttl=timedelta(days=1),
    schema=[Field(name="user_clicks_7d", dtype=Int64), Field(name="user_impressions_28d", dtype=Int64)],
    source=engagement,
)
short_ttl_v1 = FeatureService(name="short_ttl_v1", features=[short_ttl])
"""


@pytest.fixture(scope="module")
def short_ttl_repo(feature_env, tmp_path_factory):
    """A repo of its own: one view over the computed engagement table, TTL one day.

    Applied once with the file store; the same registry is then also opened
    with a DuckDB configuration, so both stores answer the same definitions.
    """
    repo = tmp_path_factory.mktemp("short_ttl")
    source = str(feature_env.offline_root / "user_engagement" / "*.parquet")
    (repo / "features.py").write_text(SHORT_TTL_DEFINITIONS.format(path=source))
    config = textwrap.dedent(
        """\
        project: short_ttl
        provider: local
        registry: data/registry.db
        online_store:
          type: sqlite
          path: data/online_store.db
        offline_store:
          type: duckdb
        entity_key_serialization_version: 3
        """
    )
    (repo / "feature_store.duckdb.yaml").write_text(config)
    (repo / "feature_store.yaml").write_text(config)
    _use_file_offline_store(repo / "feature_store.yaml")
    store.feast_apply(repo)
    from feast import FeatureStore

    file_store = FeatureStore(repo_path=str(repo))
    duckdb_store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / "feature_store.duckdb.yaml")
    return file_store, duckdb_store


def test_dask_store_drops_rows_outside_the_ttl(feature_env, short_ttl_repo):
    file_store, duckdb_store = short_ttl_repo
    engagement = feature_env.table("user_engagement")
    newest = engagement["event_timestamp"].max()
    user = sorted(engagement.loc[engagement["event_timestamp"] == newest, "user_id"])[0]
    rows = pd.DataFrame(
        {
            "user_id": [user, user],
            "item_id": ["i0", "i0"],
            # Inside the TTL of the newest snapshot, then three days after it.
            "event_timestamp": [newest + pd.Timedelta(hours=12), newest + pd.Timedelta(days=3)],
        }
    )
    service = file_store.get_feature_service("short_ttl_v1")
    raw = file_store.get_historical_features(entity_df=rows, features=service).to_df()
    assert file_store.config.offline_store.type == "file" and duckdb_store.config.offline_store.type == "duckdb"
    assert len(raw) == 1 and raw["event_timestamp"].iloc[0] == rows["event_timestamp"].iloc[0]
    with pytest.raises(RowsVanished, match=r"Feast returned 1 rows for 2 entity rows"):
        join_features(file_store, rows, "short_ttl_v1")

    # DuckDB keeps the row and, past the TTL, gives it no value (then the default).
    joined = join_features(duckdb_store, rows, "short_ttl_v1").sort_values("event_timestamp")
    assert len(joined) == 2
    expected = engagement[(engagement["user_id"] == user) & (engagement["event_timestamp"] == newest)]
    assert joined["user_impressions_28d"].tolist() == [expected["user_impressions_28d"].iloc[0], 0]
