"""The local platform's Prometheus: its configuration, and the scrape targets the supervisor moves.

One scrape configuration reads its targets from files (``file_sd_configs``),
one file per job in ``<platform>/targets/``; each file sets the ``job``
label. Prometheus watches the directory, so a target changes job (a promoted
canary becomes ``stable``) or appears and goes without a reload. The
recommender's alerting rules (recflow/monitoring/rules) are loaded too.

``prometheus`` comes from the Debian package of that name.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import recflow.monitoring

RULES = Path(recflow.monitoring.__file__).parent / "rules" / "recflow-alerts.yml"

CONFIG = """\
global:
  scrape_interval: {interval}s
  scrape_timeout: {interval}s
  evaluation_interval: {interval}s
rule_files:
  - {rules}
scrape_configs:
  - job_name: recflow  # each target file sets its own job label
    file_sd_configs:
      - files: ["{targets}/*.json"]
"""


def require_prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise FileNotFoundError("prometheus is not installed: sudo apt-get install prometheus (Debian package)")
    return path


def write_config(directory: Path, interval_seconds: int) -> Path:
    targets = directory / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    for stale in targets.glob("*.json"):
        stale.unlink()
    path = directory / "prometheus.yml"
    path.write_text(CONFIG.format(interval=interval_seconds, rules=RULES, targets=targets))
    return path


def command(binary: str, config: Path, directory: Path, port: int) -> list[str]:
    return [
        binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=7d",
    ]  # fmt: skip


def set_target(directory: Path, job: str, address: str, metrics_path: str = "/metrics") -> None:
    """Scrape ``address`` as ``job`` (replacing the job's previous target)."""
    targets = directory / "targets"
    group = [{"targets": [address], "labels": {"job": job, "__metrics_path__": metrics_path}}]
    # Written aside and renamed: Prometheus never reads half a file (the glob does not match .tmp).
    temporary = targets / f".{job}.json.tmp"
    temporary.write_text(json.dumps(group))
    temporary.replace(targets / f"{job}.json")


def remove_target(directory: Path, job: str) -> None:
    (directory / "targets" / f"{job}.json").unlink(missing_ok=True)


def scraped(url: str, job: str, address: str) -> bool:
    """Whether Prometheus at ``url`` has scraped ``address`` as ``job`` successfully.

    A new target file reaches the scrapes within about 5 s (Prometheus passes
    discovered targets on at most that often).
    """
    try:
        with urllib.request.urlopen(f"{url}/api/v1/targets?state=active", timeout=2) as response:
            targets = json.loads(response.read())["data"]["activeTargets"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return False
    return any(t["labels"].get("job") == job and t["labels"].get("instance") == address and t["health"] == "up"
               for t in targets)  # fmt: skip
