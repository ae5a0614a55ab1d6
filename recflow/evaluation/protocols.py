"""How the event log is split into what a model learns from and what it is scored on.

Two protocols, because they answer different questions:

* :func:`time_split` is the production-like one: the model is trained on
  everything before an instant and judged on what users clicked afterwards,
  exactly as a model retrained every night would be. No future leaks into train.
* :func:`stratified_split` is the protocol of the Microsoft Recommenders
  MovieLens benchmark table (random per-user split of the positives), kept so
  our numbers on MovieLens can be compared with the published ones.

In both, ``train`` keeps every event row (non-clicked impressions are useful
negatives and features), while ``test`` only holds positive events of users
that also appear in train: a user the model has never seen is a cold-start
problem, measured elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("user_id", "item_id", "event_timestamp", "clicked")


@dataclass(frozen=True)
class Split:
    """A train/test split of the event log.

    ``cutoff`` is the instant "as of" which features are read for the test:
    the split instant for the time protocol, the last event's timestamp for the
    stratified one (whose test events are interleaved with train in time).
    """

    protocol: str
    train: pd.DataFrame
    test: pd.DataFrame
    cutoff: pd.Timestamp

    def summary(self) -> dict[str, Any]:
        """Row, user and item counts, for reports and pipeline metadata."""
        return {
            "protocol": self.protocol,
            "cutoff": self.cutoff.isoformat(),
            "train_rows": len(self.train),
            "train_positives": int(self.train["clicked"].sum()),
            "train_users": int(self.train["user_id"].nunique()),
            "train_items": int(self.train["item_id"].nunique()),
            "test_rows": len(self.test),
            "test_users": int(self.test["user_id"].nunique()),
            "test_items": int(self.test["item_id"].nunique()),
        }


def _checked(events: pd.DataFrame) -> pd.DataFrame:
    """The events with a UTC timestamp column, after checking what the split relies on."""
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events lack the columns {missing}")
    if events.empty:
        raise ValueError("cannot split an empty event log")
    timestamps = pd.to_datetime(events["event_timestamp"])
    if timestamps.dt.tz is None:
        raise ValueError("event_timestamp must be timezone-aware (UTC), as in the canonical schema")
    return events.assign(event_timestamp=timestamps.dt.tz_convert("UTC")).reset_index(drop=True)


def time_split(events: pd.DataFrame, test_days: int) -> Split:
    """Train on events before the last ``test_days`` whole days, test on the clicks in them.

    The cutoff is midnight UTC ``test_days`` days before the day after the last
    event, so the test window is made of whole calendar days even when the
    last day is only partially observed.
    """
    if test_days < 1:
        raise ValueError(f"test_days must be >= 1, got {test_days}")
    events = _checked(events)
    last = events["event_timestamp"].max()
    cutoff = last.floor("D") + pd.Timedelta(days=1) - pd.Timedelta(days=test_days)
    before = events["event_timestamp"] < cutoff
    train = events[before]
    if train.empty:
        raise ValueError(
            f"test_days={test_days} leaves no training event: every event is at or after the cutoff {cutoff}"
        )
    test = events[~before & events["clicked"] & events["user_id"].isin(train["user_id"].unique())]
    if test.empty:
        raise ValueError(
            f"test_days={test_days} leaves no test event: no click at or after {cutoff} by a user seen in train"
        )
    return Split("time", train.reset_index(drop=True), test.reset_index(drop=True), cutoff)


def stratified_split(events: pd.DataFrame, ratio: float = 0.75, seed: int = 42) -> Split:
    """Split each user's positives at random into ``ratio`` train and the rest test.

    A user with n >= 2 positives keeps ``round(ratio * n)`` of them in train
    (clamped to 1..n-1 so both sides get one); a user with fewer stays wholly
    in train. Non-clicked impressions always stay in train, so every test row
    is relevant. Which events go to test depends only on the event set and the
    seed, not on the input row order: positives are put in a canonical order
    before shuffling.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must lie strictly between 0 and 1, got {ratio}")
    events = _checked(events)
    order_by = [c for c in ("user_id", "event_timestamp", "item_id", "event_id") if c in events.columns]
    positives = events[events["clicked"]].sort_values(order_by, kind="stable")
    # Codes increase with the rows since positives are grouped by user; sorting a
    # random key within each user is then a seeded per-user shuffle of all users at once.
    users = pd.factorize(positives["user_id"])[0]
    shuffled = np.lexsort((np.random.default_rng(seed).random(len(positives)), users))
    sizes = np.bincount(users)
    count = sizes[users]
    rank = np.arange(len(users)) - (np.cumsum(sizes) - sizes)[users]  # position within the user's shuffle
    n_train = np.clip(np.floor(ratio * count + 0.5), 1, np.maximum(count - 1, 1))
    in_test = (count >= 2) & (rank >= n_train)
    test_index = positives.index[shuffled[in_test]].sort_values()
    if len(test_index) == 0:
        raise ValueError("stratified split leaves no test event: no user has 2 or more positive events")
    train = events.drop(index=test_index)
    test = events.loc[test_index]
    return Split(
        "stratified",
        train.reset_index(drop=True),
        test.reset_index(drop=True),
        events["event_timestamp"].max(),
    )
