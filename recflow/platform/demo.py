"""The demo: the closed loop at demo scale, from training to a promoted retrained model, with a report.

    recflow demo [--workspace .recflow] [--config demo.yaml]      # what `make run` runs

1. **Train**: the pipeline on ``world:<scale>`` (kfp.local), unless the
   workspace already has a blessed model.
2. **Serve**: ``recflow up`` (HAProxy, Prometheus, the model server, the
   feedback service, the drift monitor).
3. **Traffic**: the simulator plays the world as the model was trained on it.
4. **The world drifts**: tastes move (``drift_strength``) until the monitor
   flags drift.
5. **Retrain on drift**: the trigger (:func:`recflow.pipeline.retrain.watch`)
   reads the verdict from Prometheus, folds the feedback into the data, runs
   the pipeline and hands the blessed model to the rollout controller, which
   promotes it or rolls it back on live evidence, users still drifting.
6. **A faulty candidate** (``fault``): rolled back.
7. The platform stops; a summary is printed and the HTML report (stages,
   drift scores and click-through over time, links to both rollout reports)
   written to ``<workspace>/demo/<time>/report.html``.

The simulator runs through every phase from 3 on; the demo fails if a
request failed or a feedback event went undelivered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from recflow.evaluation.report import png_data_uri
from recflow.feedback.simulator import SimulationConfig, SimulationReport, Simulator, ground_truth_for
from recflow.monitoring.live import CLICKED, SERVED, MonitorConfig
from recflow.rollout.analysis import AnalysisConfig
from recflow.rollout.controller import RolloutConfig

log = logging.getLogger(__name__)

DEMO_DIR = "demo"


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: str = Field("demo", description="The synthetic world trained on when the workspace has no model")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Pipeline parameters, both trainings")
    rps: float = Field(30.0, gt=0, description="Simulated requests per second")
    k: int = Field(10, ge=1, description="Items per request")
    stable_seconds: float = Field(60.0, gt=0, description="Traffic on the world as trained before it drifts")
    drift_strength: float = Field(1.0, gt=0, le=1, description="How far tastes move (1: all the way to the trend)")
    drift_timeout_seconds: float = Field(600.0, gt=0, description="Longest wait for the monitor to flag the drift")
    fault: Literal["latency", "errors", "bad-model"] = Field("errors", description="The faulty candidate's fault")
    # About 1,000 clicks per window at 30 requests/s: on the demo world the
    # clicked score sits near 0.02 once tastes moved, near the 0.025 threshold,
    # so smaller windows leave the verdict to noise (see docs/design.md).
    monitor: MonitorConfig = MonitorConfig(window_events=12_000)
    rollout: RolloutConfig = RolloutConfig(
        analysis=AnalysisConfig(steps=[25, 50, 100], min_requests=30, min_impressions=300), interval_seconds=10
    )


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    outcome: str


@dataclasses.dataclass
class DemoReport:
    stages: list[Stage] = dataclasses.field(default_factory=list)
    drift: list[dict] = dataclasses.field(default_factory=list)  # (time, scores, verdict) samples
    phases: list[tuple[str, Any]] = dataclasses.field(default_factory=list)  # (phase, simulator.Background)
    rollout_reports: dict[str, Path] = dataclasses.field(default_factory=dict)
    retrained: Any = None  # the RetrainResult
    faulty: Any = None  # the faulty candidate's RolloutResult
    path: Path | None = None

    @property
    def traffic(self) -> list[tuple[str, SimulationReport]]:
        """Each traffic phase's simulator report (once the phase ended)."""
        return [(phase, background.report) for phase, background in self.phases if background.report is not None]

    @property
    def failed_requests(self) -> int:
        return sum(sum(report.errors.values()) + report.events_unsent for _, report in self.traffic)

    def summary(self) -> str:
        lines = ["demo:"]
        lines += [f"  {stage.name:<28} {stage.seconds:7.1f} s  {stage.outcome}" for stage in self.stages]
        total = sum(stage.seconds for stage in self.stages)
        requests = sum(report.requests for _, report in self.traffic)
        lines.append(f"  {'total':<28} {total:7.1f} s")
        lines.append(f"  simulated requests {requests}, failed or undelivered {self.failed_requests}")
        lines.append(f"report: {self.path}")
        return "\n".join(lines)


def run_demo(workspace: str | Path, config: DemoConfig, progress: Callable[[str], None] = print) -> DemoReport:
    """The whole story on ``workspace``; the report (also written as HTML)."""
    from recflow.pipeline.local import run_pipeline
    from recflow.pipeline.registry import ModelRegistry
    from recflow.pipeline.retrain import RETRAINING_PARAMETERS, RetrainConfig, watch
    from recflow.platform.commands import down, up
    from recflow.platform.config import FEEDBACK_SERVICE, MONITOR_SERVICE, PlatformConfig
    from recflow.platform.rollout import rollout

    workspace = Path(workspace).resolve()
    directory = workspace / DEMO_DIR / f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    directory.mkdir(parents=True)
    report = DemoReport()
    started = time.monotonic()

    def stage(name: str, outcome: str, since: float) -> None:
        report.stages.append(Stage(name, time.monotonic() - since, outcome))
        progress(f"[{time.monotonic() - started:6.0f} s] {name}: {outcome}")

    since = time.monotonic()
    current = ModelRegistry(workspace / "models").current()
    if current is None or not _closes_the_loop(Path(current["path"])):
        outputs = run_pipeline(workspace, **{"data_source": f"world:{config.scale}", **config.parameters})
        stage("train", "blessed" if outputs.bundle else "not blessed", since)
        if outputs.bundle is None:
            raise RuntimeError(f"the first model was not blessed; see {outputs.report}")
    else:
        stage("train", "the workspace's blessed model", since)

    since = time.monotonic()
    monitor_file = directory / "monitor.yaml"
    monitor_file.write_text(yaml.safe_dump(config.monitor.model_dump()))
    monitor = MONITOR_SERVICE.model_copy(update={"command": [*MONITOR_SERVICE.command, "--config", str(monitor_file)]})
    state = up(workspace, config=PlatformConfig(services=[FEEDBACK_SERVICE, monitor]))
    stage("serve", f"platform up, proxy {state.proxy_url}", since)
    monitor_url = state.process("monitor").url
    card = json.loads((state.process("stable").bundle / "model_card.json").read_text())
    truth = ground_truth_for(card)
    try:
        since = time.monotonic()
        with _traffic(state, truth, config, None, report, "world as trained"):
            _sample_drift(monitor_url, report, started, until=lambda: time.monotonic() - since >= config.stable_seconds)
        stage("traffic, world as trained", _verdict(report), since)

        since = time.monotonic()
        with _traffic(state, truth, config, config.drift_strength, report, "world drifted"):
            deadline = since + config.drift_timeout_seconds
            _sample_drift(monitor_url, report, started, until=lambda: _drifted(report) or time.monotonic() > deadline)
            if not _drifted(report):
                raise RuntimeError(f"the monitor flagged no drift within {config.drift_timeout_seconds} s")
            stage("the world drifts", "drift detected", since)

            since = time.monotonic()
            retraining = {name: value for name, value in config.parameters.items() if name not in RETRAINING_PARAMETERS}
            # No cooldown: the demo asks for exactly one retraining, now, whatever an earlier run of it did.
            retrain_config = RetrainConfig(poll_seconds=2, cooldown_minutes=0, parameters=retraining, rollout=config.rollout)
            sampler = _DriftSampler(monitor_url, report, started)
            with sampler:
                (retrained,) = watch(workspace, retrain_config, threading.Event(), max_retrainings=1)
            report.retrained = retrained
            if retrained.rollout_report is not None:
                report.rollout_reports["retrained model"] = retrained.rollout_report
            outcome = retrained.rollout.outcome if retrained.rollout else "not blessed, not rolled out"
            stage("retrain on drift and roll out", f"{outcome} ({retrained.feedback_events} feedback events folded)", since)

            since = time.monotonic()
            result, faulty_report = rollout(workspace, _stable_bundle(workspace), config.rollout, inject_fault=config.fault)
            report.rollout_reports[f"faulty candidate ({config.fault})"] = faulty_report
            report.faulty = result
            stage(f"faulty candidate ({config.fault})", f"{result.outcome}: {result.reason}", since)
    finally:
        down(workspace)
    report.path = write_report(report, config.monitor, directory / "report.html")
    return report


def _closes_the_loop(bundle: Path) -> bool:
    """Whether a bundle can be monitored and retrained: its drift reference and its recorded dataset exist.

    Bundles exported before the drift monitor and retraining existed have
    neither; the demo trains a new model rather than fail half-way.
    """
    from recflow.monitoring.live import REFERENCE_FILE

    dataset = json.loads((bundle / "model_card.json").read_text()).get("data", {}).get("dataset")
    return (bundle / REFERENCE_FILE).is_file() and dataset is not None and Path(dataset, "manifest.json").is_file()


def _stable_bundle(workspace: Path) -> Path:
    from recflow.platform.state import PlatformState

    return PlatformState.read(workspace).process("stable").bundle


def _traffic(state, truth, config: DemoConfig, drift: float | None, report: DemoReport, phase: str):
    """The simulator in the background for one phase; its report joins the demo's when the phase ends."""
    settings = SimulationConfig(
        rps=config.rps, duration_seconds=24 * 3600, k=config.k, drift_strength=drift, seed=len(report.traffic)
    )
    background = Simulator(settings, truth, state.proxy_url, state.process("feedback").url).in_background()
    report.phases.append((phase, background))
    return background


def _sample_drift(monitor_url: str, report: DemoReport, started: float, until: Callable[[], bool]) -> None:
    while not until():
        _sample(monitor_url, report, started)
        time.sleep(2)


class _DriftSampler:
    """Samples the monitor every 2 s in the background (while the retraining runs in the foreground)."""

    def __init__(self, monitor_url: str, report: DemoReport, started: float):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(monitor_url, report, started), daemon=True)

    def _run(self, monitor_url, report, started) -> None:
        while not self.stop.wait(2):
            _sample(monitor_url, report, started)

    def __enter__(self) -> _DriftSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


def _sample(monitor_url: str, report: DemoReport, started: float) -> None:
    try:
        answer = httpx.get(f"{monitor_url}/drift", timeout=5).json()
    except httpx.HTTPError as error:  # the monitor restarting: a gap in the plot, not a failed demo
        log.warning("drift monitor unreachable: %s", error)
        return
    scores = {name: window["columns"][0]["score"] for name, window in answer.get("windows", {}).items()}
    report.drift.append({"t": time.monotonic() - started, "scores": scores, "drifted": bool(answer.get("drifted"))})


def _drifted(report: DemoReport) -> bool:
    return bool(report.drift) and report.drift[-1]["drifted"]


def _verdict(report: DemoReport) -> str:
    alarms = sum(sample["drifted"] for sample in report.drift)
    return f"{alarms} drift alarms in {len(report.drift)} looks"


def write_report(report: DemoReport, monitor: MonitorConfig, path: Path) -> Path:
    """The demo's HTML: stages, the drift scores over time, click-through per phase, the rollout reports."""
    rows = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{s.seconds:.1f}</td><td>{html.escape(s.outcome)}</td></tr>"
        for s in report.stages
    )
    traffic = "".join(
        f"<tr><td>{html.escape(phase)}</td><td>{r.requests}</td><td>{sum(r.errors.values())}</td>"
        + "".join(
            f"<td>{html.escape(variant)}: CTR {v['clicks'] / v['impressions']:.4f} ({v['impressions']} impressions)</td>"
            for variant, v in sorted(r.by_variant.items())
            if v["impressions"]
        )
        + "</tr>"
        for phase, r in report.traffic
    )
    links = "".join(
        f'<li><a href="{html.escape(str(p))}">{html.escape(name)}</a></li>' for name, p in report.rollout_reports.items()
    )
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>recflow demo</title></head><body>"
        "<h1>recflow demo: the closed loop</h1>"
        f"<h2>Stages</h2><table border=1><tr><th>stage</th><th>seconds</th><th>outcome</th></tr>{rows}</table>"
        f"<h2>Drift monitor</h2><img src='{_drift_plot(report, monitor)}' alt='drift scores over time'>"
        f"<h2>Simulated traffic</h2><table border=1><tr><th>phase</th><th>requests</th><th>failed</th></tr>{traffic}</table>"
        f"<h2>Rollouts</h2><ul>{links}</ul></body></html>"
    )
    return path


def _drift_plot(report: DemoReport, monitor: MonitorConfig) -> str:
    figure = Figure(figsize=(8, 3))
    axes = figure.add_subplot()
    columns = sorted({name for sample in report.drift for name in sample["scores"]})
    for column in columns:
        points = [(s["t"], s["scores"][column]) for s in report.drift if column in s["scores"]]
        axes.plot([t for t, _ in points], [v for _, v in points], label=column)
    for threshold, column in ((monitor.clicked_js_threshold, CLICKED), (monitor.served_js_threshold, SERVED)):
        axes.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
        axes.annotate(f"{column} threshold", (0, threshold), fontsize=7, color="grey")
    for stage_end in _cumulative(report.stages):
        axes.axvline(stage_end, color="grey", linewidth=0.5)
    axes.set_xlabel("seconds into the demo")
    axes.set_ylabel("JS divergence (nats)")
    axes.legend(loc="upper left")
    return png_data_uri(figure)


def _cumulative(stages: list[Stage]) -> list[float]:
    total, ends = 0.0, []
    for stage in stages:
        total += stage.seconds
        ends.append(total)
    return ends
