"""``recflow rollout --candidate BUNDLE``: a canary rollout on the local platform.

    recflow rollout --candidate DIR [--steps 5,25,50,100] [--interval 30] [--report rollout.html]

The decisions are :func:`recflow.rollout.controller.run_rollout`'s, the same
for every platform; here is the local backend: :class:`LocalBackend` asks
the running platform's supervisor (its control port) to start the canary
server, move its share of users, promote it or roll it back, and each
interval's figures come from the platform's Prometheus over a window equal
to the interval. One rollout at a time: the supervisor refuses a second
canary. If this process dies mid-rollout, the supervisor rolls the canary
back by itself.

The decision log (JSON lines) and the HTML report go to
``<workspace>/platform/rollouts/<time>/`` unless ``report`` says otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from recflow.platform.commands import CONFIG_FILE
from recflow.platform.config import PlatformConfig
from recflow.platform.state import PlatformState, alive, platform_directory
from recflow.rollout.analysis import VariantMetrics
from recflow.rollout.controller import RolloutConfig, RolloutResult, render_report, run_rollout
from recflow.rollout.prometheus import Prometheus, variant_metrics

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
        self.percent = 0

    def start_canary(self, bundle: str | Path) -> None:
        """Start ``bundle``'s server in the canary slot at 0 %; refused while another rollout runs."""
        log.info("starting the canary on %s", bundle)
        self._request("POST", "/canary", {"bundle": str(Path(bundle).resolve()), "owner_pid": os.getpid()},
                      timeout=self.config.start_timeout_seconds + 30)  # fmt: skip

    def set_canary_percent(self, percent: int) -> None:
        self._request("PUT", "/canary/percent", {"percent": percent})
        self.percent = percent
        log.info("canary at %d%%", percent)

    def promote(self) -> None:
        self._request("POST", "/canary/promote", timeout=self.config.stop_grace_seconds + 60)
        self.percent = 0
        log.info("canary promoted to stable")

    def roll_back(self) -> None:
        self._request("DELETE", "/canary", timeout=self.config.stop_grace_seconds + 30)
        self.percent = 0
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


class VariantMeter:
    """``measure(variant)`` for the controller: a variant's figures over the last interval, from Prometheus.

    At 100 % the stable server serves nobody, so its own figures over that
    interval are empty and the analysis could only hold; the canary is then
    judged against the stable's figures from its last interval with traffic.
    """

    def __init__(self, prometheus: Prometheus, backend: LocalBackend, window: str) -> None:
        self.prometheus, self.backend, self.window = prometheus, backend, window
        self.last_stable: VariantMetrics | None = None

    def __call__(self, variant: str) -> VariantMetrics:
        if variant == "stable" and self.backend.percent == 100 and self.last_stable is not None:
            return self.last_stable
        figures = variant_metrics(self.prometheus, variant, self.window)
        if variant == "stable":
            self.last_stable = figures
        return figures


def rollout(
    workspace: str | Path,
    candidate: str | Path,
    config: RolloutConfig,
    report: str | Path | None = None,
) -> tuple[RolloutResult, Path]:
    """Run one rollout of ``candidate`` to promotion or rollback; the result and the HTML report's path."""
    backend = LocalBackend(workspace)
    scrape = backend.config.scrape_interval_seconds
    if config.interval_seconds < 3 * scrape:
        raise ValueError(f"the interval ({config.interval_seconds} s) must span at least 3 scrapes "
                         f"({scrape} s apart) for Prometheus to measure an increase over it")  # fmt: skip
    directory = platform_directory(backend.workspace) / "rollouts" / f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    log_path = directory / "rollout.jsonl"
    report = Path(report) if report is not None else directory / "rollout.html"
    window = f"{round(config.interval_seconds * 1000)}ms"  # PromQL durations take whole units
    meter = VariantMeter(Prometheus(backend.state.prometheus_url), backend, window)
    backend.start_canary(candidate)
    try:
        result = run_rollout(backend, meter, config, log_path)
    except BaseException:  # interrupted or failed: the canary must not keep its users
        backend.roll_back()
        raise
    if result.outcome == "promoted":
        backend.promote()
    else:
        backend.roll_back()
    report.parent.mkdir(parents=True, exist_ok=True)
    return result, render_report(log_path, report)
