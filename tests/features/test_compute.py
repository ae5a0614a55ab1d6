"""Incremental daily feature computation (``recflow.features.compute``), on real files.

An incremental run must give exactly what a run from scratch gives, and do
only the work the changed partitions require: a new day computes that day, an
unchanged log computes nothing, a changed day recomputes from that day on.
Window tables are changelogs: the last row of an entity whose events left
the 28-day window holds zeros. Histories keep the last 20 clicked items.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recflow.data.dataset import Dataset, write_dataset
from recflow.features import compute

DAY = pd.Timedelta(days=1)


def _write(world, path: Path, events: pd.DataFrame) -> Dataset:
    return write_dataset(path, events, world.items, world.users, manifest={"source": "test"})


def _outputs(root: Path) -> dict[str, pd.DataFrame]:
    """Every parquet file the computation wrote, by path relative to its root."""
    return {str(p.relative_to(root)): pd.read_parquet(p) for p in sorted(root.rglob("*.parquet"))}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*.parquet"))}


def _assert_same_outputs(incremental: Path, scratch: Path) -> None:
    got, want = _outputs(incremental), _outputs(scratch)
    assert sorted(got) == sorted(want)
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], obj=name)


def _days(world) -> list[dt.date]:
    return sorted(world.events["event_timestamp"].dt.date.unique())


@pytest.fixture(scope="module")
def incremental(tiny_world, tmp_path_factory):
    """The tiny world's first N-1 days computed, then all N days computed on top."""
    world, tmp = tiny_world, tmp_path_factory.mktemp("incremental")
    days = _days(world)
    first = _write(world, tmp / "days_1_to_n-1", world.events[world.events["event_timestamp"].dt.date < days[-1]])
    root = tmp / "offline"
    before = compute.compute_features(first, root)
    mtimes_before = _mtimes(root)
    full = _write(world, tmp / "days_1_to_n", world.events)
    after = compute.compute_features(full, root)
    scratch_root = tmp / "scratch"
    scratch = compute.compute_features(full, scratch_root)
    return {
        "days": days, "root": root, "before": before, "after": after, "mtimes_before": mtimes_before,
        "full": full, "scratch_root": scratch_root, "scratch": scratch,
    }


def test_first_run_computes_every_day(incremental):
    assert incremental["before"].computed_days == incremental["days"][:-1]
    assert incremental["before"].skipped_days == []
    assert incremental["scratch"].computed_days == incremental["days"]


def test_a_new_day_computes_only_that_day(incremental):
    days = incremental["days"]
    assert incremental["after"].computed_days == [days[-1]]
    assert incremental["after"].skipped_days == days[:-1]
    # The old days' files were not rewritten.
    mtimes = _mtimes(incremental["root"])
    for name, mtime in incremental["mtimes_before"].items():
        if "profile" not in name:
            assert mtimes[name] == mtime, name


def test_incremental_equals_from_scratch(incremental):
    _assert_same_outputs(incremental["root"], incremental["scratch_root"])
    last = incremental["days"][-1].isoformat()
    assert (incremental["root"] / "user_engagement" / f"{last}.parquet").is_file()


def test_an_unchanged_rerun_computes_nothing(incremental):
    root = incremental["root"]
    before = _mtimes(root)
    result = compute.compute_features(incremental["full"], root)
    assert result.computed_days == []
    assert result.skipped_days == incremental["days"]
    after = _mtimes(root)
    assert sorted(after) == sorted(before)
    assert {k: v for k, v in after.items() if "profile" not in k} == {k: v for k, v in before.items() if "profile" not in k}


def test_tables_of_an_older_layout_are_computed_again(incremental, tmp_path):
    root = tmp_path / "offline"
    shutil.copytree(incremental["scratch_root"], root)
    state_file = root / compute.STATE_FILE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "tables_version": compute.TABLES_VERSION - 1}))
    result = compute.compute_features(incremental["full"], root)
    assert result.computed_days == incremental["days"]
    _assert_same_outputs(root, incremental["scratch_root"])


def test_a_changed_middle_day_recomputes_from_that_day_on(tiny_world, incremental, tmp_path):
    days = incremental["days"]
    middle = days[len(days) // 2]
    events = tiny_world.events.copy()
    on_middle = np.flatnonzero((events["event_timestamp"].dt.date == middle) & ~events["clicked"])[:15]
    events.loc[on_middle, "clicked"] = True
    events.loc[on_middle, "dwell_seconds"] = 42.0
    changed = _write(tiny_world, tmp_path / "changed", events)

    root = tmp_path / "offline"
    compute.compute_features(incremental["full"], root)
    before = _mtimes(root)
    result = compute.compute_features(changed, root)
    assert result.computed_days == [d for d in days if d >= middle]
    assert result.skipped_days == [d for d in days if d < middle]
    after = _mtimes(root)
    for name, mtime in before.items():
        if "profile" not in name and Path(name).stem < middle.isoformat():
            assert after[name] == mtime, name

    scratch = tmp_path / "scratch"
    compute.compute_features(changed, scratch)
    _assert_same_outputs(root, scratch)
    # And the change is really there: more clicks on the middle day.
    original = pd.read_parquet(incremental["root"] / "user_engagement" / f"{middle.isoformat()}.parquet")
    updated = pd.read_parquet(root / "user_engagement" / f"{middle.isoformat()}.parquet")
    assert updated["user_clicks_1d"].sum() == original["user_clicks_1d"].sum() + len(on_middle)


# --- hand-made logs: the 28-day window changelog and the history cap ---------------------------

START = pd.Timestamp("2025-09-01", tz="UTC")


def _event_frame(rows: list[tuple[str, str, pd.Timestamp, bool]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_timestamp", "clicked"])
    return frame.assign(
        event_id=[f"e{i}" for i in range(len(frame))],
        event_timestamp=pd.to_datetime(frame["event_timestamp"], utc=True).astype("datetime64[us, UTC]"),
        dwell_seconds=np.where(frame["clicked"], 10.0, 0.0),
        rating=np.nan,
    )


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    """41 days: "ua" is active on day 0 only; "ub" on days 0 and 40 (so the log
    spans the window and more); "uc" clicks 25 distinct items, 5 a day on days
    2..6, with unclicked impressions in between."""
    tmp = tmp_path_factory.mktemp("hand_made")
    rows = [
        ("ua", "ix", START + pd.Timedelta(hours=1), False),
        ("ua", "ix", START + pd.Timedelta(hours=2), True),
        ("ua", "iy", START + pd.Timedelta(hours=3), False),
        ("ub", "iy", START + pd.Timedelta(hours=4), False),
        ("ub", "iy", START + 40 * DAY + pd.Timedelta(hours=4), True),
    ]
    for n in range(25):
        at = START + (2 + n // 5) * DAY + pd.Timedelta(hours=1 + 2 * (n % 5))
        rows.append(("uc", "iz", at - pd.Timedelta(minutes=30), False))
        rows.append(("uc", f"h{n:02d}", at, True))
    events = _event_frame(rows)
    item_ids = sorted(set(events["item_id"]))
    items = pd.DataFrame(
        {"item_id": item_ids, "category": "cat", "created_at": START - 100 * DAY, "title": item_ids}
    ).astype({"created_at": "datetime64[us, UTC]"})
    users = pd.DataFrame(
        {"user_id": ["ua", "ub", "uc"], "signup_at": START - 100 * DAY, "segment": "europe", "age": np.int32(30)}
    ).astype({"signup_at": "datetime64[us, UTC]"})
    dataset = write_dataset(tmp / "dataset", events, items, users, manifest={"source": "hand-made"})
    root = tmp / "offline"
    result = compute.compute_features(dataset, root)

    def table(name):
        return pd.concat([pd.read_parquet(p) for p in sorted((root / name).glob("*.parquet"))], ignore_index=True)

    return dataset, result, table


def _snapshot(day: int) -> pd.Timestamp:
    """Stamp of the snapshot holding days <= ``day``."""
    return START + (day + 1) * DAY


def test_hand_made_log_computes_every_calendar_day(hand_made):
    dataset, result, _ = hand_made
    assert len(dataset.days()) == 7  # days 0, 2..6 and 40 have events
    assert result.computed_days == [(START + i * DAY).date() for i in range(41)]


def _as_of(rows: pd.DataFrame, day: int) -> pd.Series:
    """What a point-in-time lookup sees at the end of ``day``: the latest row at or before its stamp."""
    return rows[rows.index <= _snapshot(day)].iloc[-1]


def test_window_changelog_has_a_row_at_every_change_and_ends_with_zeros(hand_made):
    _, _, table = hand_made
    engagement = table("user_engagement")
    ua = engagement[engagement["user_id"] == "ua"].sort_values("event_timestamp").set_index("event_timestamp")
    # Events on day 0 only: they enter every window on day 0 and leave the 1-, 7-
    # and 28-day windows on days 1, 7 and 28; those are the only rows.
    assert ua.index.tolist() == [_snapshot(d) for d in (0, 1, 7, 28)]
    assert _as_of(ua, 0)[["user_impressions_1d", "user_clicks_1d", "user_impressions_28d", "user_clicks_28d"]].tolist() == [3, 1, 3, 1]
    assert _as_of(ua, 0)["user_ctr_28d"] == pytest.approx(1 / 3)
    assert _as_of(ua, 0)["user_dwell_28d"] == pytest.approx(10.0)
    assert _as_of(ua, 1)["user_impressions_1d"] == 0 and _as_of(ua, 6)["user_impressions_7d"] == 3
    assert _as_of(ua, 7)["user_impressions_7d"] == 0 and _as_of(ua, 7)["user_ctr_7d"] == 0
    assert _as_of(ua, 27)["user_impressions_28d"] == 3
    last = ua.iloc[-1]
    numeric = [c for c in ua.columns if c != "user_id"]
    assert (last[numeric] == 0).all(), last

    # "ub" leaves the windows the same way, is absent while idle, and comes back on day 40.
    ub = engagement[engagement["user_id"] == "ub"].sort_values("event_timestamp")
    assert ub["event_timestamp"].tolist() == [_snapshot(d) for d in (0, 1, 7, 28, 40)]
    assert (ub.iloc[-2][numeric] == 0).all()
    assert ub.iloc[-1][["user_impressions_1d", "user_clicks_28d"]].tolist() == [1, 1]

    # Items follow the same changelog.
    stats = table("item_stats")
    ix = stats[stats["item_id"] == "ix"].sort_values("event_timestamp")
    assert ix["event_timestamp"].tolist() == [_snapshot(d) for d in (0, 1, 7, 28)]
    assert ix.iloc[0][["item_impressions_28d", "item_clicks_28d"]].tolist() == [2, 1]
    assert (ix.iloc[-1][[c for c in ix.columns if c != "item_id"]].drop("event_timestamp") == 0).all()


def test_the_latest_row_at_any_instant_is_the_current_value(hand_made):
    """What a point-in-time join sees for "ua" on day 35: the zero row, not a stale count."""
    _, _, table = hand_made
    engagement = table("user_engagement")
    ua = engagement[(engagement["user_id"] == "ua") & (engagement["event_timestamp"] <= START + 35 * DAY)]
    assert ua.sort_values("event_timestamp").iloc[-1]["user_impressions_28d"] == 0


def test_history_keeps_the_last_20_clicked_items_newest_last(hand_made):
    _, _, table = hand_made
    history = table("user_history")
    uc = history[history["user_id"] == "uc"].sort_values("event_timestamp")
    clicked = [f"h{n:02d}" for n in range(25)]
    assert uc["event_timestamp"].tolist() == [_snapshot(d) for d in range(2, 7)]
    for i, items in enumerate(uc["user_recent_item_ids"]):
        assert list(items) == clicked[: 5 * (i + 1)][-20:]
    assert list(uc["user_recent_item_ids"].iloc[-1]) == clicked[5:]
    last_click = START + 6 * DAY + pd.Timedelta(hours=9)
    assert uc["user_last_click_ts"].iloc[-1] == int(last_click.timestamp())
    # History rows are written on click days only: "ua" keeps its one click for good.
    assert set(history["user_id"]) == {"ua", "ub", "uc"}
    ua = history[history["user_id"] == "ua"]
    assert ua["event_timestamp"].tolist() == [_snapshot(0)] and list(ua["user_recent_item_ids"].iloc[0]) == ["ix"]
