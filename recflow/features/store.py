"""The Feast repository recflow runs against: prepare, apply, materialize.

The definitions live in the project's ``feature_repo/``. A run never writes
into the source tree: ``prepare_repo`` copies the definitions and one
``feature_store.yaml`` variant (local or cluster) into the workspace, where
the offline tables, the registry and the online store then live. The variants
differ only by configuration.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEFINITIONS = ("features.py", ".feastignore")
VARIANTS = {"local": "feature_store.yaml", "cluster": "feature_store.cluster.yaml"}
# Where the definitions put the offline tables unless RECFLOW_OFFLINE_ROOT says otherwise.
DEFAULT_OFFLINE_ROOT = "data/offline"


def source_repo() -> Path:
    """The project's feature repo: $RECFLOW_FEATURE_REPO (images), else beside the package."""
    configured = os.environ.get("RECFLOW_FEATURE_REPO")
    path = Path(configured) if configured else Path(__file__).resolve().parents[2] / "feature_repo"
    if not (path / "features.py").is_file():
        raise FileNotFoundError(f"no Feast definitions at {path}/features.py (set RECFLOW_FEATURE_REPO)")
    return path


def prepare_repo(target: str | Path, variant: str = "local") -> Path:
    """Copy the definitions and the chosen store configuration into ``target``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown feature store variant {variant!r}; choose one of {sorted(VARIANTS)}")
    source, target = source_repo(), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in DEFINITIONS:
        shutil.copyfile(source / name, target / name)
    shutil.copyfile(source / VARIANTS[variant], target / "feature_store.yaml")
    return target


def copy_repo(source: str | Path, target: str | Path) -> Path:
    """A working copy of an applied repo (tables, online store), registered afresh.

    The registry records the online store's tables with the store's absolute
    path, so a plain copy applied later would tear those tables down in the
    *source*'s store. The copy drops the registry and applies the
    definitions again: same data, its own registry.
    """
    import yaml

    target = Path(shutil.copytree(source, target))
    registry = yaml.safe_load((target / "feature_store.yaml").read_text())["registry"]
    registry = registry["path"] if isinstance(registry, dict) else registry
    if "://" in registry:
        raise ValueError(f"{source} keeps its registry at {registry}: only a file registry can be copied")
    (target / registry).unlink(missing_ok=True)
    feast_apply(target)
    return target


def offline_root(repo: str | Path) -> Path:
    """The directory the definitions read the offline tables from."""
    configured = os.environ.get("RECFLOW_OFFLINE_ROOT", DEFAULT_OFFLINE_ROOT)
    return Path(configured) if Path(configured).is_absolute() else Path(repo) / configured


# Feast's own command line, run by this interpreter after importing recflow,
# which spares feast's import-time type instrumentation (``recflow/__init__.py``):
# ``feast apply`` of the tiny repo took 6.9-7.4 s from the ``feast`` script, 4.1-4.6 s this way.
FEAST_CLI = "import sys, recflow; from feast.cli.cli import cli; sys.exit(cli(prog_name='feast'))"


def feast_apply(repo: str | Path) -> str:
    """Run the real ``feast apply`` on the repo, in a process of its own (it imports every .py there)."""
    command = [sys.executable, "-c", FEAST_CLI, "-c", str(repo), "apply"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"feast apply failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    log.info("feast apply: %s", result.stdout.strip().replace("\n", "; "))
    return result.stdout


def get_store(repo: str | Path):
    from feast import FeatureStore

    return FeatureStore(repo_path=str(Path(repo).resolve()))


def materialize(repo: str | Path, end: dt.datetime) -> dict[str, float]:
    """Load the newest offline row of every entity up to ``end`` into the online store.

    Incremental: Feast remembers per view how far it got, so a second run only
    moves the interval on. Returns the seconds taken.
    """
    store = get_store(repo)
    started = time.perf_counter()
    store.materialize_incremental(end_date=end)
    seconds = time.perf_counter() - started
    return {"seconds": seconds}
