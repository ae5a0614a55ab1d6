"""The rollout controller: move a canary through the traffic steps, analyse each interval, decide.

One loop for every platform. A :class:`TrafficBackend` moves traffic (the
local HAProxy, :class:`recflow.rollout.proxy.TrafficProxy`; the
InferenceService on a cluster) and a metrics source measures each variant
(:func:`recflow.rollout.prometheus.variant_metrics`);
:func:`recflow.rollout.analysis.analyse` decides. After every interval:

- ``advance``: the next step's weight is set; ``promote`` after the last;
- ``hold``: the step is kept for another interval, at most
  ``max_holds_per_step`` times, after which the canary is rolled back (a
  canary that cannot gather evidence is not promoted on faith);
- ``rollback``: the canary's weight goes back to 0 at once.

The evidence at a step is everything since its weight was set: after n
intervals there, both variants are measured over the last n intervals. So a
hold waits for more evidence rather than starting again: a step whose every
interval is short of ``min_requests`` is judged once the intervals together
hold enough. Judging after every interval is repeated testing either way;
on nested windows the looks are correlated, so a false rollback grows less
likely with the holds than when each interval was judged on its own (the
first version, in which a hold also added no evidence).

At the last step (100 %) the stable server has no users, so the canary's
figures there are compared with the stable's at the last step that had
traffic.
The caller hands over both bundles' export-time score histograms
(:class:`recflow.rollout.analysis.ScoreReferences`), which the score check
judges each model's live scores against.

Every decision goes to a JSON-lines log with its evidence (both variants'
figures and every check), and :func:`render_report` draws the HTML report:
traffic weight, p99 latency and click-through per variant over time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from recflow.evaluation.report import png_data_uri
from recflow.rollout.analysis import AnalysisConfig, ScoreReferences, VariantMetrics, analyse


class TrafficBackend(Protocol):
    def set_canary_percent(self, percent: int) -> None: ...


class RolloutBackend(TrafficBackend, Protocol):
    """A backend that can also make the canary the stable model, or remove it."""

    def promote(self) -> None: ...

    def roll_back(self) -> None: ...


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    analysis: AnalysisConfig = AnalysisConfig()
    interval_seconds: float = Field(30.0, gt=0, description="Time at a step between two analyses")
    max_holds_per_step: int = Field(5, ge=0, description="Intervals without enough evidence before rolling back")


@dataclass(frozen=True)
class RolloutResult:
    outcome: str  # "promoted" | "rolled back"
    reason: str
    final_percent: int
    log_path: Path


def run_rollout(
    backend: TrafficBackend,
    measure: Callable[[str, float], VariantMetrics],
    config: RolloutConfig,
    log_path: str | Path,
    sleep: Callable[[float], None] = time.sleep,
    references: ScoreReferences = ScoreReferences(),
) -> RolloutResult:
    """Drive one rollout to promotion or rollback; ``measure("stable"|"canary", seconds)`` gives a variant's
    figures over the last ``seconds``."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    steps = config.analysis.steps
    with log_path.open("a") as log:
        step_index, holds = 0, 0
        last_stable: VariantMetrics | None = None
        backend.set_canary_percent(steps[0])
        while True:
            sleep(config.interval_seconds)
            # Every interval since the step's weight was set (holds included).
            seconds = (holds + 1) * config.interval_seconds
            # At 100 % the stable server serves nobody: the canary is judged
            # against the stable's figures at the last step with traffic instead.
            stable_now = steps[step_index] < 100 or last_stable is None
            stable = measure("stable", seconds) if stable_now else last_stable
            last_stable = stable
            canary = measure("canary", seconds)
            decision = analyse(stable, canary, steps[step_index], config.analysis, references)
            action, reason = decision.action, decision.reason
            if action == "hold":
                holds += 1
                if holds > config.max_holds_per_step:
                    action, reason = "rollback", f"no verdict after {holds} intervals at {steps[step_index]}%: {reason}"
            record = {
                "time": time.time(),
                "percent": steps[step_index],
                "seconds": seconds,
                "action": action,
                "reason": reason,
                "checks": decision.to_dict()["checks"],
                "stable": dataclasses.asdict(stable),
                "stable_interval": "this" if stable_now else "previous",
                "canary": dataclasses.asdict(canary),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            if action == "rollback":
                backend.set_canary_percent(0)
                return RolloutResult("rolled back", reason, 0, log_path)
            if action == "promote":
                return RolloutResult("promoted", reason, 100, log_path)
            if action == "advance":
                step_index, holds = step_index + 1, 0
                backend.set_canary_percent(steps[step_index])


def carry_out(
    backend: RolloutBackend,
    measure: Callable[[str, float], VariantMetrics],
    config: RolloutConfig,
    log_path: str | Path,
    sleep: Callable[[float], None] = time.sleep,
    references: ScoreReferences = ScoreReferences(),
) -> RolloutResult:
    """:func:`run_rollout` on a started canary, and its outcome applied, on every backend alike.

    Promoted: ``backend.promote()``. Rolled back, and equally when anything
    interrupts the rollout (an error, Ctrl-C): ``backend.roll_back()``, so a
    canary never keeps its users without a verdict.
    """
    try:
        result = run_rollout(backend, measure, config, log_path, sleep=sleep, references=references)
    except BaseException:
        backend.roll_back()
        raise
    if result.outcome == "promoted":
        backend.promote()
    else:
        backend.roll_back()
    return result


def rollout_files(root: str | Path, report: str | Path | None = None) -> tuple[Path, Path, Path]:
    """(directory, decision log, HTML report) of a new rollout: ``<root>/rollouts/<time>/``, the report where asked."""
    directory = Path(root) / "rollouts" / f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    return directory, directory / "rollout.jsonl", Path(report) if report is not None else directory / "rollout.html"


def read_log(log_path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]


def render_report(log_path: str | Path, out: str | Path) -> Path:
    """The rollout's HTML page: the decisions with their evidence, and the plots over time."""
    records = read_log(log_path)
    if not records:
        raise ValueError(f"{log_path} holds no decisions to report")
    start = records[0]["time"]
    minutes = [(r["time"] - start) / 60 for r in records]
    figure = Figure(figsize=(10, 7.5))
    weight, latency, ctr = figure.subplots(3, 1, sharex=True)
    weight.step(minutes, [r["percent"] for r in records], where="post", label="canary")
    weight.step(minutes, [100 - r["percent"] for r in records], where="post", label="stable")
    weight.set_ylabel("traffic %")
    for variant in ("stable", "canary"):
        latency.plot(minutes, [r[variant]["p99_seconds"] * 1000 for r in records], marker="o", label=variant)
        ctr.plot(minutes, [_ctr(r[variant]) for r in records], marker="o", label=variant)
    latency.set_ylabel("p99 ms")
    ctr.set_ylabel("click-through")
    ctr.set_xlabel("minutes since the first analysis")
    for axis in (weight, latency, ctr):
        axis.legend(loc="best")
        axis.grid(alpha=0.3)
    rows = "".join(
        f"<tr><td>{m:.1f}</td><td>{r['percent']}%</td><td>{_window(r)}</td><td>{html.escape(r['action'])}</td>"
        f"<td>{html.escape(r['reason'])}</td></tr>"
        for m, r in zip(minutes, records)
    )
    final = records[-1]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>recflow rollout</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}}</style>
</head><body><h1>Rollout: {html.escape(final['action'])}</h1><p>{html.escape(final['reason'])}</p>
<img alt="traffic, latency and click-through per variant" src="{png_data_uri(figure)}">
<h2>Decisions</h2><table><tr><th>minute</th><th>canary</th><th>evidence</th><th>action</th><th>reason</th></tr>{rows}</table>
</body></html>"""
    out = Path(out)
    out.write_text(page)
    return out


def _window(record: dict) -> str:
    """The seconds at the step the decision was taken on (logs from before windows grew have none)."""
    return f"last {record['seconds']:g} s" if "seconds" in record else ""


def _ctr(metrics: dict) -> float:
    return metrics["clicks"] / metrics["impressions"] if metrics["impressions"] else float("nan")
