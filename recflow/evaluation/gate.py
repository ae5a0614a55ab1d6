"""The blessing gate: whether a freshly trained model may replace the served one.

Modelled on TFX's Evaluator blessing. A candidate is blessed when every
configured check passes:

* value thresholds: an absolute floor per metric (catches a broken model);
* lift over the popularity baseline: a model that cannot beat "recommend the
  most clicked items" is not worth its serving cost;
* regression vs the last blessed model: a relative drop beyond the tolerance
  blocks the rollout. The very first model has nothing to be compared with, so
  only the first two kinds of checks apply to it.

Every check is expressed as "value >= threshold" with the threshold converted
to an absolute number, so a report can show both side by side. A metric the
candidate (or its reference) lacks fails its check instead of raising: a gate
must produce a decision, and "could not verify" is a "no".
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

METRIC_NAME = re.compile(r"^(?:(?:precision|recall|ndcg|hit_rate|coverage)@[1-9][0-9]*|map)$")
KNOWN_METRICS = "precision@K, recall@K, ndcg@K, hit_rate@K, coverage@K (K a positive integer) or map"


class GateConfig(BaseModel):
    """Thresholds per metric; an empty mapping disables that kind of check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value_thresholds: dict[str, float] = Field(default_factory=dict)
    """metric -> minimal absolute value."""
    min_lift_over_baseline: dict[str, float] = Field(default_factory=dict)
    """metric -> minimal relative lift over popularity (0.0 = not worse, 0.1 = 10% better)."""
    max_regression_vs_blessed: dict[str, float] = Field(default_factory=dict)
    """metric -> maximal relative drop vs the last blessed model (0.05 = at most 5% worse)."""

    @field_validator("value_thresholds", "min_lift_over_baseline", "max_regression_vs_blessed")
    @classmethod
    def _known_metrics(cls, thresholds: dict[str, float]) -> dict[str, float]:
        unknown = sorted(name for name in thresholds if not METRIC_NAME.match(name))
        if unknown:
            raise ValueError(f"unknown metric name(s) {unknown}; expected {KNOWN_METRICS}")
        infinite = sorted(name for name, value in thresholds.items() if not math.isfinite(value))
        if infinite:
            raise ValueError(f"thresholds must be finite numbers, not for {infinite}")
        return thresholds

    @field_validator("max_regression_vs_blessed")
    @classmethod
    def _non_negative_drop(cls, thresholds: dict[str, float]) -> dict[str, float]:
        negative = sorted(name for name, value in thresholds.items() if value < 0)
        if negative:
            raise ValueError(f"a maximal regression is a relative drop >= 0; negative for {negative}")
        return thresholds


@dataclass(frozen=True)
class Check:
    """One gate check: passed iff ``value >= threshold`` (both absolute metric values)."""

    name: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str


@dataclass(frozen=True)
class BlessingDecision:
    blessed: bool
    checks: list[Check]
    compared_with_blessed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines: the verdict, then one line per check."""
        passed = sum(check.passed for check in self.checks)
        reference = "the last blessed model" if self.compared_with_blessed else "the baseline only (first model)"
        lines = [
            f"{'BLESSED' if self.blessed else 'NOT BLESSED'}: {passed}/{len(self.checks)} checks passed,"
            f" compared with {reference}"
        ]
        lines += [f"  [{'PASS' if c.passed else 'FAIL'}] {c.name} {c.metric}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def _value(metrics: dict[str, Any], metric: str) -> float | None:
    """The metric as a finite float, or None where it is missing or not a number."""
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def _relative_check(
    name: str, metric: str, candidate: float | None, reference: float | None, label: str, factor: float, rule: str
) -> Check:
    """Candidate vs ``reference * factor``; ``rule`` says in words what the factor means."""
    if candidate is None:
        return Check(name, metric, None, None, False, f"the candidate has no valid {metric}")
    if reference is None:
        return Check(name, metric, candidate, None, False, f"the {label} has no valid {metric} to compare with")
    threshold = reference * factor
    change = f"{(candidate - reference) / reference:+.1%}" if reference else "n/a"
    return Check(
        name,
        metric,
        candidate,
        threshold,
        candidate >= threshold,
        f"{candidate:.4f} vs {label} {reference:.4f} (change {change}); {rule}, i.e. >= {threshold:.4f}",
    )


def decide(
    candidate: dict[str, Any],
    baseline: dict[str, Any],
    last_blessed: dict[str, Any] | None,
    config: GateConfig,
) -> BlessingDecision:
    """Run every configured check on the candidate's metrics and bless it iff all pass."""
    checks = []
    for metric, minimum in config.value_thresholds.items():
        value = _value(candidate, metric)
        if value is None:
            check = Check("value_threshold", metric, None, minimum, False, f"the candidate has no valid {metric}")
        else:
            detail = f"{value:.4f}, required >= {minimum:.4f}"
            check = Check("value_threshold", metric, value, minimum, value >= minimum, detail)
        checks.append(check)
    for metric, lift in config.min_lift_over_baseline.items():
        checks.append(
            _relative_check(
                "lift_over_baseline",
                metric,
                _value(candidate, metric),
                _value(baseline, metric),
                "baseline",
                1.0 + lift,
                f"required lift >= {lift:+.1%}",
            )
        )
    if last_blessed is not None:
        for metric, drop in config.max_regression_vs_blessed.items():
            checks.append(
                _relative_check(
                    "regression_vs_blessed",
                    metric,
                    _value(candidate, metric),
                    _value(last_blessed, metric),
                    "last blessed",
                    1.0 - drop,
                    f"allowed drop <= {drop:.1%}",
                )
            )
    return BlessingDecision(
        blessed=all(check.passed for check in checks),
        checks=checks,
        compared_with_blessed=last_blessed is not None,
    )
