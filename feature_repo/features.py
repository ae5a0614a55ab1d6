"""recflow's Feast definitions: entities, sources, feature views, feature services.

`feast apply` (run by `recflow features apply`, or by hand with
`feast -c <repo> apply`) registers everything in this file. Feature services are
the contract between training and serving: training joins
`store.get_feature_service("retrieval_v1")` point-in-time correctly, serving
reads the same service from the online store.

The parquet tables are written by `recflow.features.compute` as daily snapshots:
a row stamped at 00:00 UTC of day d+1 holds values computed from events of days
<= d only. The offline root is configuration (`RECFLOW_OFFLINE_ROOT`, relative
paths resolve against this repo), so the local and cluster stores differ only
by configuration, never by these definitions.
"""

import os
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float64, Int64, String

# Resolved here, not by the store: the DuckDB offline store reads source paths
# as given, so a relative path must not depend on the working directory.
OFFLINE_ROOT = os.environ.get("RECFLOW_OFFLINE_ROOT") or str(Path(__file__).resolve().parent / "data" / "offline")

# Snapshots are emitted for every entity whose windows changed, including the
# day a window drops back to zero, so a point-in-time lookup always finds the
# current row. The TTL is therefore long: it only bounds how far back Feast
# looks, and a short TTL would make the file offline store drop rows.
SNAPSHOT_TTL = timedelta(days=3650)

# Typed join keys: nothing is inferred from the data at apply time, so `feast
# apply` works before the first table is computed.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A person receiving recommendations")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A recommendable item")


def _source(table: str) -> FileSource:
    return FileSource(
        name=f"{table}_source",
        path=f"{OFFLINE_ROOT}/{table}/*.parquet",
        timestamp_field="event_timestamp",
    )


user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="user_segment", dtype=String, description="Region / occupation; 'unknown' if absent"),
        Field(name="user_age", dtype=Int64, description="Age in years; -1 if unknown"),
    ],
    source=_source("user_profile"),
)

user_engagement = FeatureView(
    name="user_engagement",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="user_impressions_1d", dtype=Int64),
        Field(name="user_clicks_1d", dtype=Int64),
        Field(name="user_impressions_7d", dtype=Int64),
        Field(name="user_clicks_7d", dtype=Int64),
        Field(name="user_ctr_7d", dtype=Float64),
        Field(name="user_impressions_28d", dtype=Int64),
        Field(name="user_clicks_28d", dtype=Int64),
        Field(name="user_ctr_28d", dtype=Float64),
        Field(name="user_dwell_28d", dtype=Float64, description="Mean dwell seconds per click"),
    ],
    source=_source("user_engagement"),
)

item_profile = FeatureView(
    name="item_profile",
    entities=[item],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="item_category", dtype=String),
        Field(name="item_created_ts", dtype=Int64, description="Creation time, epoch seconds"),
    ],
    source=_source("item_profile"),
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="item_impressions_7d", dtype=Int64),
        Field(name="item_clicks_7d", dtype=Int64),
        Field(name="item_ctr_7d", dtype=Float64),
        Field(name="item_impressions_28d", dtype=Int64),
        Field(name="item_clicks_28d", dtype=Int64),
        Field(name="item_dwell_28d", dtype=Float64, description="Mean dwell seconds per click"),
    ],
    source=_source("item_stats"),
)

# Fresh signals: the serving path pushes a click here and the user's next
# request sees it; the daily batch snapshots back-fill the same view.
user_history_push = PushSource(name="user_history_push", batch_source=_source("user_history"))

user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="user_recent_item_ids", dtype=Array(String), description="Last clicked items, newest last"),
        Field(name="user_last_click_ts", dtype=Int64, description="Epoch seconds of the last click"),
        Field(
            name="user_feedback_seq",
            dtype=Int64,
            description="Feedback-log position of the newest click in this row; 0 for batch snapshots",
        ),
    ],
    source=user_history_push,
)

# What models read of the history (projected in the services below; a
# module-level projection would be applied as a second view of that name). The
# feedback position is bookkeeping that makes replaying the feedback log
# idempotent, never a model input.
MODEL_HISTORY_FEATURES = ["user_recent_item_ids", "user_last_click_ts"]

# Smoothed CTRs and log popularity, computed identically offline and online.
# Feast stores each function's source, so it may use only its own locals and
# the imports Feast provides (pandas, numpy). The prior (1 click in 20
# impressions) pulls a user or item with few impressions towards a typical CTR
# instead of a noisy 0 or 1. One view per entity, not one over both: a view
# that reads one entity's features is computed once per entity where serving
# joins the sides (the user's few rows per request, the item snapshot once),
# not once per (user, candidate) row.


@on_demand_feature_view(sources=[user_engagement], schema=[Field(name="user_ctr_7d_smoothed", dtype=Float64)])
def user_ratios(inputs: pd.DataFrame) -> pd.DataFrame:
    """The user's smoothed 7-day CTR.

    In numpy, not pandas Series arithmetic: serving runs this on every
    request's few users, where each pandas operation costs tens of
    microseconds whatever the rows (0.48 ms against 0.10 ms for 8 users).
    """
    prior_clicks, prior_impressions = 1.0, 20.0
    clicks = inputs["user_clicks_7d"].to_numpy(dtype="float64", na_value=0.0)
    impressions = inputs["user_impressions_7d"].to_numpy(dtype="float64", na_value=0.0)
    smoothed = (clicks + prior_clicks) / (impressions + prior_impressions)
    return pd.DataFrame({"user_ctr_7d_smoothed": smoothed}, index=inputs.index)


@on_demand_feature_view(
    sources=[item_stats],
    schema=[
        Field(name="item_ctr_7d_smoothed", dtype=Float64),
        Field(name="item_log_popularity_28d", dtype=Float64),
    ],
)
def item_ratios(inputs: pd.DataFrame) -> pd.DataFrame:
    """The item's smoothed 7-day CTR and log 28-day clicks."""
    import numpy as np

    prior_clicks, prior_impressions = 1.0, 20.0
    clicks = inputs["item_clicks_7d"].to_numpy(dtype="float64", na_value=0.0)
    impressions = inputs["item_impressions_7d"].to_numpy(dtype="float64", na_value=0.0)
    clicks_28d = inputs["item_clicks_28d"].to_numpy(dtype="float64", na_value=0.0)
    return pd.DataFrame(
        {
            "item_ctr_7d_smoothed": (clicks + prior_clicks) / (impressions + prior_impressions),
            "item_log_popularity_28d": np.log1p(clicks_28d),
        },
        index=inputs.index,
    )


retrieval_v1 = FeatureService(
    name="retrieval_v1",
    description="Two-tower retrieval: user profile, engagement and history; item profile and stats",
    features=[user_profile, user_engagement, user_history[MODEL_HISTORY_FEATURES], item_profile, item_stats],
)

ranking_v1 = FeatureService(
    name="ranking_v1",
    description="Ranking: everything retrieval reads plus the on-demand engagement ratios",
    features=[
        user_profile, user_engagement, user_history[MODEL_HISTORY_FEATURES], item_profile, item_stats,
        user_ratios, item_ratios,
    ],
)
