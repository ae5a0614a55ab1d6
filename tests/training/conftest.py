"""Synthetic training sets with a planted signal, shared by the training tests.

Users belong to one of four segments and items to one of four categories; a
user clicks an item of "their" category (category index == segment index)
with probability 0.8 and any other with probability 0.1. Histories hold
clicked items of the user's category. A trained model must recover this.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

SEGMENTS = ["north", "south", "east", "west"]
CATEGORIES = ["news", "sports", "music", "games"]


def make_training_frame(rows: int = 2000, users: int = 120, items: int = 80, seed: int = 0) -> pd.DataFrame:
    """A training frame following the naming contract, with nulls sprinkled in."""
    rng = np.random.default_rng(seed)
    user_segment = rng.integers(0, len(SEGMENTS), users)
    item_category = np.arange(items) % len(CATEGORIES)
    items_by_category = [np.flatnonzero(item_category == c) for c in range(len(CATEGORIES))]

    user = rng.integers(0, users, rows)
    item = rng.integers(0, items, rows)
    liked = item_category[item] == user_segment[user]
    label = (rng.random(rows) < np.where(liked, 0.8, 0.1)).astype(np.float64)

    history = []
    for u in user:
        length = rng.integers(0, 6)
        if length == 0:
            history.append(None if rng.random() < 0.5 else [])
        else:
            picks = rng.choice(items_by_category[user_segment[u]], size=length)
            history.append([f"i{p}" for p in picks])

    user_clicks = rng.poisson(5, rows).astype(np.float64)
    user_clicks[rng.random(rows) < 0.1] = np.nan
    segment = np.array(SEGMENTS, dtype=object)[user_segment[user]]
    segment[rng.random(rows) < 0.05] = None
    return pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in user],
            "item_id": [f"i{i}" for i in item],
            "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86_400 * 30, rows), unit="s"),
            "label": label,
            "user_segment": segment,
            "user_clicks_7d": user_clicks,
            "user_age": rng.integers(18, 70, rows),
            "user_recent_item_ids": history,
            "item_category": np.array(CATEGORIES, dtype=object)[item_category[item]],
            "item_impressions_7d": rng.lognormal(5, 2, rows).round(),
            "item_ctr_7d": rng.random(rows),
        }
    )


@pytest.fixture(scope="session")
def make_frame():
    """The frame factory, for tests that need another size or seed."""
    return make_training_frame


@pytest.fixture
def training_frame() -> pd.DataFrame:
    return make_training_frame()


@pytest.fixture
def training_set(tmp_path, training_frame) -> str:
    """The planted frame written as the training-set parquet."""
    path = tmp_path / "training_set.parquet"
    training_frame.to_parquet(path, index=False)
    return str(path)
