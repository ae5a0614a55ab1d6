"""A trained tiny workspace, shared by every test directory that needs a real bundle (one run per session).

The workspace comes from the real training pipeline (kfp.local, world:tiny):
a materialized SQLite online store and a blessed bundle. The request instant
is pinned to an hour after the end of the data, so an offline computation at
that instant sees exactly what a server saw, and clicks pushed in between are
newer than every materialized row (Redis keeps the newest row of an entity).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from recflow.features import store
from recflow.pipeline.local import run_pipeline
from recflow.pipeline.registry import ModelRegistry

TINY = {"data_source": "world:tiny", "epochs": 1, "nproc_per_node": 1, "test_days": 2, "gate": "{}"}


@dataclass(frozen=True)
class Workspace:
    path: Path
    bundle: Path
    card: dict
    # The pipeline parameters it was trained with.
    parameters: dict

    @property
    def feature_repo(self) -> Path:
        return self.path / "feature_repo"

    @property
    def snapshot_at(self) -> pd.Timestamp:
        return pd.Timestamp(self.card["item_snapshot_at"])

    @property
    def request_time(self) -> pd.Timestamp:
        return self.snapshot_at + pd.Timedelta(hours=1)

    def known_users(self) -> list[str]:
        """Users with a click history, hence rows in the online store, sorted."""
        root = store.offline_root(self.feature_repo) / "user_history"
        files = sorted(root.glob("*.parquet"))
        ids = pd.concat([pd.read_parquet(f, columns=["user_id"]) for f in files])["user_id"]
        return sorted(ids.astype(str).unique())


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    path = tmp_path_factory.mktemp("serving_workspace")
    run_pipeline(path, **TINY)
    current = ModelRegistry(path / "models").current()
    assert current is not None, "the tiny pipeline run blessed no model"
    bundle = Path(current["path"])
    return Workspace(path, bundle, json.loads((bundle / "model_card.json").read_text()), TINY)
