"""One tiny world, its feature tables and a real Feast repo, shared by the feature tests.

Building it costs one ``feast apply`` (a subprocess, a few seconds), so it is
done once per session: the world is written as a dataset, the daily snapshot
tables are computed into the repo's offline root, and the project's own
definitions are applied with the DuckDB offline store and the SQLite online
store (``feature_repo/feature_store.yaml``). Tests must not modify it; a test
that needs other tables or another store builds its own in ``tmp_path``.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from recflow.data.dataset import Dataset, write_dataset
from recflow.data.world import World, generate_world, world_config
from recflow.features import compute, store

SERVICE = "retrieval_v1"


@dataclass
class FeatureEnv:
    world: World
    dataset: Dataset
    repo: Path
    offline_root: Path
    result: compute.ComputeResult

    def store(self):
        return store.get_store(self.repo)

    def table(self, name: str) -> pd.DataFrame:
        """Every row of one computed offline table (all its daily files)."""
        files = sorted(glob.glob(str(self.offline_root / name / "*.parquet")))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


@pytest.fixture(scope="session")
def tiny_world() -> World:
    return generate_world(world_config("tiny"))


@pytest.fixture(scope="session")
def feature_env(tiny_world, tmp_path_factory) -> FeatureEnv:
    root = tmp_path_factory.mktemp("feature_env")
    with pytest.MonkeyPatch.context() as patch:
        # The definitions resolve the offline root at import time from this
        # variable (in the `feast apply` subprocess too): keep it inside the repo.
        patch.delenv("RECFLOW_OFFLINE_ROOT", raising=False)
        dataset = write_dataset(
            root / "dataset", tiny_world.events, tiny_world.items, tiny_world.users, manifest={"source": "world"}
        )
        repo = store.prepare_repo(root / "feature_repo")
        offline_root = store.offline_root(repo)
        result = compute.compute_features(dataset, offline_root)
        store.feast_apply(repo)
    return FeatureEnv(tiny_world, dataset, repo, offline_root, result)
