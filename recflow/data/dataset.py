"""A dataset on disk: the event log partitioned by day, items, users, a manifest.

Layout (one directory, written atomically)::

    DIR/manifest.json                      what it is, where it came from, counts
    DIR/events/date=YYYY-MM-DD/part-0.parquet
    DIR/items.parquet
    DIR/users.parquet
    DIR/ground_truth/                      synthetic worlds only (see recflow.data.world)

Day partitions are what makes feature computation incremental: a new day is a
new partition, and only the windows that contain it are recomputed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recflow.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA

MANIFEST = "manifest.json"
EVENTS_DIR = "events"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
GROUND_TRUTH_DIR = "ground_truth"
# Manifest key: the feedback-log events folded into a dataset, one entry per
# fold ({"replayed_onto": first day, "last_sequence": last log position, ...}),
# written by recflow.pipeline.retrain and read by the feature computation.
FEEDBACK_FOLDS = "feedback_folds"
SCHEMA_VERSION = 1


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Cast a frame to one of the canonical schemas (columns in schema order)."""
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"missing columns {missing}; expected {schema.names}")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def partition_day(day: dt.date) -> str:
    return f"date={day.isoformat()}"


@dataclass(frozen=True)
class Dataset:
    """Read access to a dataset directory written by :func:`write_dataset`."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not (self.path / MANIFEST).is_file():
            raise FileNotFoundError(f"{self.path} is not a recflow dataset (no {MANIFEST})")

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())

    @property
    def ground_truth_dir(self) -> Path | None:
        candidate = self.path / GROUND_TRUTH_DIR
        return candidate if candidate.is_dir() else None

    def days(self) -> list[dt.date]:
        """The days that have an event partition, in order."""
        found = []
        for child in (self.path / EVENTS_DIR).iterdir():
            if child.is_dir() and child.name.startswith("date="):
                found.append(dt.date.fromisoformat(child.name[len("date=") :]))
        return sorted(found)

    def event_partition(self, day: dt.date) -> Path:
        return self.path / EVENTS_DIR / partition_day(day) / "part-0.parquet"

    def read_events(
        self,
        start: dt.date | None = None,
        end: dt.date | None = None,
        columns: list[str] | None = None,
    ) -> pd.DataFrame:
        """Events of the days in [start, end] (inclusive; None = unbounded)."""
        days = [d for d in self.days() if (start is None or d >= start) and (end is None or d <= end)]
        tables = [pq.read_table(self.event_partition(d), columns=columns) for d in days]
        if not tables:
            return EVENTS_SCHEMA.empty_table().select(columns or EVENTS_SCHEMA.names).to_pandas()
        return pa.concat_tables(tables).to_pandas()

    def read_items(self) -> pd.DataFrame:
        return pq.read_table(self.path / ITEMS_FILE).to_pandas()

    def read_users(self) -> pd.DataFrame:
        return pq.read_table(self.path / USERS_FILE).to_pandas()


def write_dataset(
    path: str | Path,
    events: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    manifest: dict[str, Any],
    extra: Callable[[Path], None] | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Write a dataset directory atomically and return it.

    Everything is written into a sibling temporary directory that is renamed into
    place at the end, so a crash or a bad input never leaves a half-written
    dataset behind. ``extra(tmp_dir)`` may add files (e.g. the world's ground truth).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        events_table = to_table(events, EVENTS_SCHEMA)
        days = pd.to_datetime(events["event_timestamp"], utc=True).dt.date
        for day, index in events.groupby(days.to_numpy(), sort=True).indices.items():
            target = tmp / EVENTS_DIR / partition_day(day)
            target.mkdir(parents=True)
            part = events_table.take(pa.array(index)).sort_by("event_timestamp")
            pq.write_table(part, target / "part-0.parquet")
        (tmp / EVENTS_DIR).mkdir(exist_ok=True)
        pq.write_table(to_table(items, ITEMS_SCHEMA), tmp / ITEMS_FILE)
        pq.write_table(to_table(users, USERS_SCHEMA), tmp / USERS_FILE)
        timestamps = pd.to_datetime(events["event_timestamp"], utc=True)
        full_manifest = {
            "schema_version": SCHEMA_VERSION,
            **manifest,
            "num_events": int(len(events)),
            "num_users": int(len(users)),
            "num_items": int(len(items)),
            "start": timestamps.min().isoformat() if len(events) else None,
            "end": timestamps.max().isoformat() if len(events) else None,
        }
        if extra is not None:
            extra(tmp)
        (tmp / MANIFEST).write_text(json.dumps(full_manifest, indent=2, sort_keys=True) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Dataset(path)
