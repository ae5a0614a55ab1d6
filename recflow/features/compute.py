"""Feature tables computed from the event log, incrementally by day.

Every table is a series of daily snapshots. The row of entity e stamped
``day + 1 (00:00 UTC)`` holds values computed from the events of days <= day,
so a point-in-time join for a label at time t only ever sees days strictly
before t's day: no label leaks into its own features.

Window tables (user engagement, item stats) are written as a changelog: a row
on every day some window of the entity changes (an event enters the windows,
or leaves the 1-, 7- or 28-day window, the last one resetting the counts to
zero), so the latest row at or before any instant is always the correct value.
History rows are written on the days a user clicks.

Incremental: per-day aggregates are cached, and a run recomputes only the days
from the earliest day whose event partition is new or changed (a fingerprint
per partition). Appending a day to the log computes that one day.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recflow.data.dataset import FEEDBACK_FOLDS, Dataset

log = logging.getLogger(__name__)

WINDOWS = (1, 7, 28)
LONGEST_WINDOW = max(WINDOWS)
HISTORY_LENGTH = 20
WINDOW_CHUNK_DAYS = 64
# Days after an event on which some window's value changes (enters, then leaves each window).
CHANGE_LAGS = (0, *WINDOWS)
STATE_FILE = "_state.json"
# The tables' layout. A state written for another layout (2: user_history gained
# user_feedback_seq) is discarded, so every day is computed again.
TABLES_VERSION = 2
DAILY_DIR = "_daily"

USER_ENGAGEMENT = "user_engagement"
ITEM_STATS = "item_stats"
USER_HISTORY = "user_history"
# The user_history column saying which feedback-log clicks a row holds (recflow.feedback).
FEEDBACK_SEQ_COLUMN = "user_feedback_seq"
USER_PROFILE = "user_profile"
ITEM_PROFILE = "item_profile"
DAILY_TABLES = (USER_ENGAGEMENT, ITEM_STATS, USER_HISTORY)
EPOCH = pd.Timestamp(0, tz="UTC")


@dataclass(frozen=True)
class ComputeResult:
    computed_days: list[dt.date]
    skipped_days: list[dt.date]
    rows: dict[str, int]

    def to_dict(self) -> dict:
        return {
            "computed_days": [d.isoformat() for d in self.computed_days],
            "skipped_days": len(self.skipped_days),
            "rows": self.rows,
        }


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def epoch_seconds(timestamps: pd.Series) -> pd.Series:
    """Whole seconds since the epoch, whatever the datetime unit of the series."""
    return ((pd.to_datetime(timestamps, utc=True) - EPOCH) // pd.Timedelta(seconds=1)).astype("int64")


def _snapshot_time(day: dt.date) -> pd.Timestamp:
    """The instant a day's snapshot becomes valid: the start of the next day."""
    return pd.Timestamp(day + dt.timedelta(days=1), tz="UTC")


def _table_file(root: Path, table: str, day: dt.date) -> Path:
    return root / table / f"{day.isoformat()}.parquet"


def _write(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    tmp.replace(path)


def _daily_aggregates(events: pd.DataFrame, key: str) -> pd.DataFrame:
    grouped = events.assign(
        dwell=np.where(events["clicked"], events["dwell_seconds"], 0.0),
    ).groupby(key, sort=True)
    return pd.DataFrame(
        {
            "impressions": grouped.size(),
            "clicks": grouped["clicked"].sum().astype("int64"),
            "dwell": grouped["dwell"].sum(),
        }
    ).reset_index()


def _window_rows(daily: dict[dt.date, pd.DataFrame], key: str, prefix: str, target_days: list[dt.date]) -> dict[dt.date, pd.DataFrame]:
    """Rolling window sums over cached per-day aggregates, one frame per target day."""
    if not target_days:
        return {}
    first = target_days[0] - dt.timedelta(days=LONGEST_WINDOW)
    span = [first + dt.timedelta(days=i) for i in range((target_days[-1] - first).days + 1)]
    frames = [daily[d].assign(day=i) for i, d in enumerate(span) if d in daily and len(daily[d])]
    if not frames:
        return {d: pd.DataFrame() for d in target_days}
    long = pd.concat(frames, ignore_index=True)
    entities, entity_index = np.unique(long[key].to_numpy(), return_inverse=True)
    n_days = len(span)
    # Dense [entity, day] grids with a leading zero column, so a window sum is a
    # difference of two cumulative sums.
    grids = {}
    for column in ("impressions", "clicks", "dwell"):
        grid = np.zeros((len(entities), n_days + 1))
        np.add.at(grid, (entity_index, long["day"].to_numpy() + 1), long[column].to_numpy())
        grids[column] = np.cumsum(grid, axis=1)

    def window(column: str, end: int, length: int) -> np.ndarray:
        return grids[column][:, end + 1] - grids[column][:, max(end + 1 - length, 0)]

    out = {}
    for day in target_days:
        end = (day - first).days
        # A row only where some window's value changes: an event enters every
        # window on its day and leaves the w-day window w days later. Between
        # change points the previous row is still the correct value.
        alive = np.zeros(len(entities), dtype=bool)
        for lag in CHANGE_LAGS:
            alive |= window("impressions", end - lag, 1) > 0
        columns = {key: entities[alive], "event_timestamp": _snapshot_time(day)}
        for length in WINDOWS:
            imps = window("impressions", end, length)[alive]
            clicks = window("clicks", end, length)[alive]
            if length == 1:
                columns[f"{prefix}_impressions_1d"] = imps.astype("int64")
                columns[f"{prefix}_clicks_1d"] = clicks.astype("int64")
                continue
            columns[f"{prefix}_impressions_{length}d"] = imps.astype("int64")
            columns[f"{prefix}_clicks_{length}d"] = clicks.astype("int64")
            columns[f"{prefix}_ctr_{length}d"] = np.divide(clicks, imps, out=np.zeros_like(clicks), where=imps > 0)
        clicks_28 = window("clicks", end, LONGEST_WINDOW)[alive]
        dwell_28 = window("dwell", end, LONGEST_WINDOW)[alive]
        columns[f"{prefix}_dwell_28d"] = np.divide(dwell_28, clicks_28, out=np.zeros_like(dwell_28), where=clicks_28 > 0)
        out[day] = pd.DataFrame(columns)
    return out


# Which window features each table carries (item stats have no 1-day window).
_TABLE_COLUMNS = {
    USER_ENGAGEMENT: [
        "user_impressions_1d", "user_clicks_1d", "user_impressions_7d", "user_clicks_7d", "user_ctr_7d",
        "user_impressions_28d", "user_clicks_28d", "user_ctr_28d", "user_dwell_28d",
    ],
    ITEM_STATS: [
        "item_impressions_7d", "item_clicks_7d", "item_ctr_7d",
        "item_impressions_28d", "item_clicks_28d", "item_dwell_28d",
    ],
}


def _latest_history(root: Path, before: dt.date) -> pd.DataFrame:
    """Each user's history as of the end of the day before ``before``."""
    files = sorted(p for p in (root / USER_HISTORY).glob("*.parquet") if dt.date.fromisoformat(p.stem) < before)
    if not files:
        return pd.DataFrame({"user_id": pd.Series(dtype=str), "user_recent_item_ids": pd.Series(dtype=object)})
    frame = pd.concat([pq.read_table(p).to_pandas() for p in files], ignore_index=True)
    frame = frame.sort_values("event_timestamp").drop_duplicates("user_id", keep="last")
    return frame[["user_id", "user_recent_item_ids"]]


def extend_history(previous, clicked: list[str]) -> list[str]:
    """A user's recent clicks after ``clicked`` (oldest first): newest last, at most ``HISTORY_LENGTH``.

    The one rule for the history feature: the daily snapshots and the online
    push of fresh clicks (:mod:`recflow.features.online`) both apply it.
    """
    old = list(previous) if isinstance(previous, (list, tuple, np.ndarray)) else []
    return (old + list(clicked))[-HISTORY_LENGTH:]


def _history_rows(previous: pd.DataFrame, clicks: pd.DataFrame, day: dt.date, feedback_seq: int) -> pd.DataFrame:
    """Append a day's clicks to each clicking user's history, keeping the newest.

    ``feedback_seq``: the feedback-log position the day's data holds (see
    :func:`feedback_positions`); 0 for days with no feedback folded in.
    """
    clicks = clicks.sort_values(["user_id", "event_timestamp"], kind="stable")
    today = clicks.groupby("user_id", sort=True).agg(
        new_items=("item_id", list), last_ts=("event_timestamp", "max")
    )
    prior = previous.set_index("user_id")["user_recent_item_ids"].reindex(today.index)
    merged = [extend_history(old, new) for old, new in zip(prior.to_numpy(), today["new_items"].to_numpy())]
    return pd.DataFrame(
        {
            "user_id": today.index.to_numpy(),
            "event_timestamp": _snapshot_time(day),
            "user_recent_item_ids": merged,
            "user_last_click_ts": epoch_seconds(today["last_ts"]).to_numpy(),
            FEEDBACK_SEQ_COLUMN: feedback_seq,
        }
    )


def feedback_positions(dataset: Dataset) -> Callable[[dt.date], int]:
    """The feedback-log position a day's history rows hold: the last of the folds that start on or before it.

    A dataset with the feedback log folded in (``recflow.pipeline.retrain``)
    holds every logged click up to a fold's ``last_sequence`` from that fold's
    first day on. A history row written for such a day says so, as a pushed
    row does (:func:`recflow.features.online.push_clicks`): when the feedback
    service replays its log into a store materialized from these rows, it
    skips the clicks they already hold. Days before any fold hold none (0).
    """
    folds = sorted(
        (dt.date.fromisoformat(fold["replayed_onto"]), int(fold["last_sequence"]))
        for fold in dataset.manifest.get(FEEDBACK_FOLDS, [])
    )

    def position(day: dt.date) -> int:
        held = [sequence for start, sequence in folds if start <= day]
        return held[-1] if held else 0

    return position


def _profiles(dataset: Dataset, root: Path) -> dict[str, int]:
    """Static profile tables, rewritten whole (they are small)."""
    users = dataset.read_users()
    user_profile = pd.DataFrame(
        {
            "user_id": users["user_id"],
            "event_timestamp": pd.to_datetime(users["signup_at"], utc=True),
            "user_segment": users["segment"],
            "user_age": users["age"].astype("Int64").fillna(-1).astype("int64"),
        }
    )
    items = dataset.read_items()
    created = pd.to_datetime(items["created_at"], utc=True)
    item_profile = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "event_timestamp": created,
            "item_category": items["category"],
            "item_created_ts": epoch_seconds(created),
        }
    )
    _write(user_profile, root / USER_PROFILE / "profile.parquet")
    _write(item_profile, root / ITEM_PROFILE / "profile.parquet")
    return {USER_PROFILE: len(user_profile), ITEM_PROFILE: len(item_profile)}


def compute_features(dataset: Dataset, offline_root: str | Path, events_filter: set[str] | None = None) -> ComputeResult:
    """Bring the offline feature tables under ``offline_root`` up to date with ``dataset``.

    ``events_filter``: if given, only events whose ``event_id`` is in it count
    (the stratified protocol's training split). It is part of each day's
    fingerprint, so changing it recomputes what it changes.
    """
    root = Path(offline_root)
    root.mkdir(parents=True, exist_ok=True)
    state_path = root / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("tables_version") != TABLES_VERSION:
        state = {"tables_version": TABLES_VERSION, "days": {}}
    filter_digest = (
        hashlib.sha256("\n".join(sorted(events_filter)).encode()).hexdigest() if events_filter is not None else ""
    )
    days = dataset.days()
    fingerprints = {d.isoformat(): _fingerprint(dataset.event_partition(d)) + filter_digest for d in days}
    fingerprints_by_day = {d: fingerprints[d.isoformat()] for d in days}
    changed = [d for d in days if state["days"].get(d.isoformat()) != fingerprints[d.isoformat()]]
    removed = [dt.date.fromisoformat(d) for d in state["days"] if d not in fingerprints]
    rows = _profiles(dataset, root)
    if not changed and not removed:
        log.info("features are up to date (%d days)", len(days))
        return ComputeResult([], days, rows)

    start = min(changed + removed)
    # Drop every output from the first changed day on; it is recomputed below.
    for table in DAILY_TABLES + (f"{DAILY_DIR}/user", f"{DAILY_DIR}/item"):
        for path in (root / table).glob("*.parquet"):
            if dt.date.fromisoformat(path.stem) >= start:
                path.unlink()
    # Every calendar day from the first changed one: a day without events still
    # moves the windows on.
    targets = [start + dt.timedelta(days=i) for i in range((days[-1] - start).days + 1)] if days else []
    log.info("computing features for %d day(s) from %s (%d unchanged)", len(targets), start, sum(d < start for d in days))

    # Per-day aggregates for the new days, cached for later windows.
    history = _latest_history(root, start)
    feedback_seq = feedback_positions(dataset)
    rows[USER_HISTORY] = 0
    for day in targets:
        if day not in fingerprints_by_day:
            continue
        events = pq.read_table(
            dataset.event_partition(day),
            columns=["event_id", "user_id", "item_id", "event_timestamp", "clicked", "dwell_seconds"],
        ).to_pandas()
        if events_filter is not None:
            # A set lookup per row: pandas' isin would rebuild a hash table of
            # the whole filter for each of thousands of days.
            kept = np.fromiter((event in events_filter for event in events["event_id"]), dtype=bool, count=len(events))
            events = events[kept]
        _write(_daily_aggregates(events, "user_id"), _table_file(root, f"{DAILY_DIR}/user", day))
        _write(_daily_aggregates(events, "item_id"), _table_file(root, f"{DAILY_DIR}/item", day))
        clicks = events[events["clicked"]]
        if len(clicks):
            day_history = _history_rows(history, clicks, day, feedback_seq(day))
            _write(day_history, _table_file(root, USER_HISTORY, day))
            history = pd.concat([history[~history["user_id"].isin(day_history["user_id"])], day_history[history.columns]])
            rows[USER_HISTORY] += len(day_history)

    window_start = start - dt.timedelta(days=LONGEST_WINDOW)
    for kind, key, table, prefix in (("user", "user_id", USER_ENGAGEMENT, "user"), ("item", "item_id", ITEM_STATS, "item")):
        daily = {
            dt.date.fromisoformat(p.stem): pq.read_table(p).to_pandas()
            for p in (root / DAILY_DIR / kind).glob("*.parquet")
            if dt.date.fromisoformat(p.stem) >= window_start
        }
        rows[table] = 0
        # Chunks of target days keep the dense [entity, day] grids small on logs
        # that span years (MovieLens spans 22 years with few entities a day).
        for chunk_start in range(0, len(targets), WINDOW_CHUNK_DAYS):
            chunk = targets[chunk_start : chunk_start + WINDOW_CHUNK_DAYS]
            for day, frame in _window_rows(daily, key, prefix, chunk).items():
                if len(frame):
                    _write(frame[[key, "event_timestamp", *_TABLE_COLUMNS[table]]], _table_file(root, table, day))
                rows[table] += len(frame)

    state["days"] = fingerprints
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(state_path)
    return ComputeResult(targets, [d for d in days if d < start], rows)


def reset_features(offline_root: str | Path) -> None:
    """Remove every computed table (a full recompute follows on the next run)."""
    shutil.rmtree(offline_root, ignore_errors=True)
