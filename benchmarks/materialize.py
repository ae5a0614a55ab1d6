"""Benchmark: materializing a world's features into the online store.

    recflow bench materialize --scale demo

Generates the world (once, kept in the workspace), computes the offline
feature tables, applies the Feast repo and times a full materialization into
a fresh SQLite online store. Prints seconds and rows/s. Online rows are one
per entity and view (Feast writes the newest value of each entity).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd

from recflow.data.dataset import Dataset
from recflow.features import compute, store
from recflow.pipeline import steps


def run(scale: str, workspace: Path) -> dict:
    workspace = workspace.resolve()
    dataset_dir = workspace / f"world-{scale}"
    if not (dataset_dir / "manifest.json").is_file():
        steps.ingest(f"world:{scale}", workspace / "raw")
        steps.validate(workspace / "raw", dataset_dir)
        shutil.rmtree(workspace / "raw")
    dataset = Dataset(dataset_dir)
    repo = steps.feature_repo(workspace)
    shutil.rmtree(repo, ignore_errors=True)
    store.prepare_repo(repo)
    started = time.perf_counter()
    compute.compute_features(dataset, store.offline_root(repo))
    compute_seconds = time.perf_counter() - started
    result = steps.apply_and_materialize(dataset_dir, workspace)
    root = store.offline_root(repo)
    rows = {}
    for table, key in (("user_profile", "user_id"), ("user_engagement", "user_id"), ("user_history", "user_id"),
                       ("item_profile", "item_id"), ("item_stats", "item_id")):  # fmt: skip
        rows[table] = int(pd.read_parquet(root / table, columns=[key])[key].nunique())
    offline_rows = sum(len(pd.read_parquet(path, columns=[]).index) for path in root.glob("*/*.parquet") if "_daily" not in str(path))
    online_rows = sum(rows.values())
    return {
        "scale": scale,
        "events": dataset.manifest["num_events"],
        "offline_rows": offline_rows,
        "compute_seconds": round(compute_seconds, 2),
        "online_rows": online_rows,
        "online_rows_by_view": rows,
        "materialize_seconds": round(result["seconds"], 2),
        "online_rows_per_second": round(online_rows / result["seconds"]),
    }
