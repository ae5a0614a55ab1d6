"""``recflow rollout --candidate BUNDLE``: a canary rollout on the local platform.

    recflow rollout --candidate DIR [--steps 5,25,50,100] [--interval 30] [--report rollout.html]

The decisions, and applying them, are :func:`recflow.rollout.controller.carry_out`'s, the same
for every platform; here is the local backend: :class:`LocalBackend` asks
the running platform's supervisor (its control port) to start the canary
server, move its share of users, promote it or roll it back, and the
figures come from the platform's Prometheus over the step so far; the score check reads both bundles' export-time score
histograms (the stable's bundle as the platform state names it). One
rollout at a time: the supervisor refuses a second canary. If this process
dies mid-rollout, the supervisor rolls the canary back by itself.

The decision log (JSON lines) and the HTML report go to
``<workspace>/platform/rollouts/<time>/`` unless ``report`` says otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import yaml

from recflow.monitoring.live import read_score_reference
from recflow.platform.commands import CONFIG_FILE
from recflow.platform.config import PlatformConfig
from recflow.platform.state import PlatformState, alive, platform_directory
from recflow.rollout.analysis import ScoreReferences
from recflow.rollout.controller import RolloutConfig, RolloutResult, carry_out, render_report, rollout_files
from recflow.rollout.faults import bad_model_bundle, serving_fault
from recflow.rollout.prometheus import Prometheus, variant_metrics
from serving.config import ServingConfig

log = logging.getLogger("recflow.rollout")


class LocalBackend:
    """The traffic backend of the local platform: its supervisor's control port, over HTTP."""

    def __init__(self, workspace: str | Path) -> None:
        self.workspace = Path(workspace).resolve()
        state = PlatformState.read(self.workspace)
        if state is None or state.status != "running" or not alive(state.supervisor_pid):
            raise RuntimeError(f"no platform running in {self.workspace}: `recflow up` starts one")
        self.state = state
        self.config = PlatformConfig.model_validate_json((platform_directory(self.workspace) / CONFIG_FILE).read_text())

    def start_canary(self, bundle: str | Path, serving_config: Path | None = None) -> None:
        """Start ``bundle``'s server in the canary slot at 0 %; refused while another rollout runs.

        ``serving_config``: the canary's own serving settings (default: the platform's).
        """
        log.info("starting the canary on %s", bundle)
        body = {"bundle": str(Path(bundle).resolve()), "owner_pid": os.getpid(),
                "serving_config": str(serving_config.resolve()) if serving_config else None}  # fmt: skip
        self._request("POST", "/canary", body,
                      timeout=self.config.start_timeout_seconds + 30)  # fmt: skip

    def set_canary_percent(self, percent: int) -> None:
        self._request("PUT", "/canary/percent", {"percent": percent})
        log.info("canary at %d%%", percent)

    def promote(self) -> None:
        self._request("POST", "/canary/promote", timeout=self.config.stop_grace_seconds + 60)
        log.info("canary promoted to stable")

    def roll_back(self) -> None:
        self._request("DELETE", "/canary", timeout=self.config.stop_grace_seconds + 30)
        log.info("canary rolled back and stopped")

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0) -> None:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.state.control_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return
        except urllib.error.HTTPError as error:
            detail = json.loads(error.read() or b"{}").get("error", f"HTTP {error.code}")
            raise RuntimeError(f"the platform refused {method} {path}: {detail}") from error
        except (urllib.error.URLError, OSError) as error:
            address = self.state.control_url
            raise RuntimeError(f"the platform's supervisor at {address} is unreachable: {error}") from error


def rollout(
    workspace: str | Path,
    candidate: str | Path,
    config: RolloutConfig,
    report: str | Path | None = None,
    inject_fault: str | None = None,
) -> tuple[RolloutResult, Path]:
    """Run one rollout of ``candidate`` to promotion or rollback; the result and the HTML report's path.

    ``inject_fault`` (``latency``, ``errors``, ``bad-model``; see
    :mod:`recflow.rollout.faults`) makes the candidate faulty on purpose: a
    drill that the analysis catches it.
    """
    backend = LocalBackend(workspace)
    scrape = backend.config.scrape_interval_seconds
    if config.interval_seconds < 3 * scrape:
        raise ValueError(f"the interval ({config.interval_seconds} s) must span at least 3 scrapes "
                         f"({scrape} s apart) for Prometheus to measure an increase over it")  # fmt: skip
    directory, log_path, report = rollout_files(platform_directory(backend.workspace), report)
    prometheus = Prometheus(backend.state.prometheus_url)
    serving_config = None
    if inject_fault is not None:
        candidate, serving_config = _faulty(candidate, inject_fault, backend.config.serving_config, directory)
    # A bad-model drill's bundle is a copy: it carries the original's scores, which it must still match.
    stable_bundle = backend.state.process("stable").bundle
    references = ScoreReferences(read_score_reference(stable_bundle), read_score_reference(candidate))
    backend.start_canary(candidate, serving_config)
    result = carry_out(backend, partial(variant_metrics, prometheus), config, log_path, references=references)
    report.parent.mkdir(parents=True, exist_ok=True)
    return result, render_report(log_path, report)


def _faulty(candidate: str | Path, fault: str, platform_serving: Path | None, directory: Path) -> tuple[Path, Path | None]:
    """The candidate bundle and canary serving config of a drill: the platform's settings plus the fault."""
    directory.mkdir(parents=True, exist_ok=True)
    server_fault = serving_fault(fault)
    if server_fault is None:
        return bad_model_bundle(candidate, directory / "bad-model-bundle"), None
    settings = ServingConfig.from_file(platform_serving) if platform_serving is not None else ServingConfig()
    path = directory / "canary-serving.yaml"
    faulty = settings.model_copy(update={"inject_fault": server_fault})
    path.write_text(yaml.safe_dump(faulty.model_dump(mode="json", exclude_none=True)))
    return Path(candidate), path
