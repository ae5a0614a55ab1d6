"""Planted ranking data shared by the ranking tests.

Items belong to one of four categories; each user's click history leans
towards one favourite category. The click probability of a (user, item) row
rises with the share of the user's history in the item's category and with a
per-item quality that shows in `item_ctr_7d`. The user's segment is noise. A
ranker must recover the history/category interaction to rank well.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

CATEGORIES = ["news", "sports", "music", "games"]
SEGMENTS = ["north", "south"]
START = pd.Timestamp("2024-03-01", tz="UTC")


def item_category(item: int) -> str:
    return CATEGORIES[item % len(CATEGORIES)]


def click_logit(fraction: np.ndarray, quality: np.ndarray) -> np.ndarray:
    return -2.0 + 4.0 * fraction + 1.0 * quality


def make_ranking_frame(rows: int = 4000, users: int = 200, items: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    categories = np.arange(items) % len(CATEGORIES)
    by_category = [np.flatnonzero(categories == c) for c in range(len(CATEGORIES))]
    quality = rng.normal(0.0, 1.0, items)
    taste = rng.integers(0, len(CATEGORIES), users)
    histories: list[list[int]] = []
    for u in range(users):
        length = rng.integers(0, 9)
        picks = [
            rng.choice(by_category[taste[u]]) if rng.random() < 0.75 else rng.integers(0, items) for _ in range(length)
        ]
        histories.append([int(p) for p in picks])

    user = rng.integers(0, users, rows)
    item = rng.integers(0, items, rows)
    fraction = np.array(
        [np.mean(categories[histories[u]] == categories[i]) if histories[u] else 0.25 for u, i in zip(user, item)]
    )
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-click_logit(fraction, quality[item])))).astype(np.float64)
    timestamps = START + pd.to_timedelta(rng.integers(0, 86_400 * 20, rows), unit="s")
    history_column = [
        None if not histories[u] and u % 2 else [f"i{p}" for p in histories[u]] for u in user
    ]
    return pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in user],
            "item_id": [f"i{i}" for i in item],
            "event_timestamp": timestamps,
            "label": label,
            "user_segment": np.array(SEGMENTS, dtype=object)[user % 2],
            "user_clicks_7d": rng.poisson(4, rows).astype(np.float64),
            "user_recent_item_ids": history_column,
            "user_last_click_ts": (START.timestamp() + rng.integers(-86_400, 86_400 * 20, rows)).astype(np.int64),
            "item_category": np.array(CATEGORIES, dtype=object)[categories[item]],
            "item_ctr_7d": 1.0 / (1.0 + np.exp(-quality[item])),
            "item_impressions_7d": rng.lognormal(5, 1, rows).round(),
            "item_created_ts": (START.timestamp() - 86_400 * (item % 30)).astype(np.int64),
            "retrieval_score": 0.5 * fraction + rng.normal(0.0, 0.5, rows),
        }
    )


@pytest.fixture(scope="session")
def make_ranking():
    return make_ranking_frame
