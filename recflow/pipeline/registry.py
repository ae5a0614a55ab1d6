"""Model cards and the registry of blessed models.

The registry is a directory (``<workspace>/models``): each blessed bundle is
copied under its version, and ``registry.json`` lists them in order; the last
one is "the last blessed model" the gate compares the next candidate with and
the bundle serving deploys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

import recflow

REGISTRY_FILE = "registry.json"


def code_version() -> dict[str, str]:
    """The package version and, when run from a git checkout, the commit."""
    version = {"recflow": recflow.__version__}
    commit = os.environ.get("RECFLOW_GIT_COMMIT")
    if commit is None:
        result = subprocess.run(
            ["git", "-C", str(Path(recflow.__file__).parent), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        commit = result.stdout.strip() if result.returncode == 0 else "unknown"
    version["git_commit"] = commit
    return version


def build_model_card(
    bundle: Path,
    evaluation: dict[str, Any],
    manifest: dict[str, Any],
    feature_service: str,
    training: dict[str, Any],
    snapshot_at: pd.Timestamp,
) -> dict[str, Any]:
    weights = (bundle / "model" / "model.pt").read_bytes()
    created = dt.datetime.now(dt.timezone.utc)
    return {
        "name": "recommender",
        "version": f"{created:%Y%m%d-%H%M%S}-{hashlib.sha256(weights).hexdigest()[:8]}",
        "created_at": created.isoformat(),
        "model": "retrieval: two-tower over an ANN index -> ranking: DCN-v2 -> re-ranking: MMR and filters",
        "feature_service": feature_service,
        "metrics": {name: result["metrics"] for name, result in evaluation["results"].items()},
        "k": evaluation["k"],
        "evaluation": evaluation["context"],
        "data": {key: manifest.get(key) for key in ("source", "scale", "seed", "format", "start", "end", "num_events", "num_users", "num_items")},
        "training": training,
        "retrieval": evaluation["retrieval"],
        "stages": evaluation["stages"],
        "stack": evaluation["stack"],
        "item_snapshot_at": snapshot_at.isoformat(),
        "code_version": code_version(),
        "parent_model": evaluation["parent_model"],
        "blessing": evaluation["decision"],
    }


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _entries(self) -> list[dict[str, Any]]:
        path = self.root / REGISTRY_FILE
        return json.loads(path.read_text())["blessed"] if path.exists() else []

    def current(self) -> dict[str, Any] | None:
        """The last blessed model, or None before the first one."""
        entries = self._entries()
        return entries[-1] if entries else None

    def register(self, bundle: Path, card: dict[str, Any]) -> dict[str, Any]:
        """Copy a blessed bundle into the registry and make it the current model."""
        target = self.root / card["version"]
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(bundle, target)
        entry = {
            "version": card["version"],
            "path": str(target.resolve()),
            "created_at": card["created_at"],
            "feature_service": card["feature_service"],
            "metrics": card["metrics"]["model"],
        }
        entries = self._entries() + [entry]
        tmp = self.root / f".{REGISTRY_FILE}.tmp"
        tmp.write_text(json.dumps({"blessed": entries}, indent=2) + "\n")
        tmp.replace(self.root / REGISTRY_FILE)
        return entry
