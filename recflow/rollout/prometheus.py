"""What the canary analysis measures, read from Prometheus over its HTTP API.

Each variant is one scrape ``job`` (the local platform's Prometheus names its
jobs after the servers; on a cluster the ServiceMonitor relabels the
predictor's pods the same way). One interval's :class:`VariantMetrics` are
the increases over the last ``window`` of:

- ``recflow_requests_total`` (inference endpoints; 5xx among them are errors),
- ``recflow_batch_users_sum`` (users answered) and
  ``recflow_fallback_total`` (users answered by a fallback, cold starts
  excepted: an unknown user is not a failure of the model),
- ``recflow_request_seconds`` (p99 from the histogram),
- ``recflow_served_score`` (the histogram's per-bucket counts),
- ``recflow_feedback_impressions_total`` / ``recflow_feedback_clicks_total``
  with ``variant`` set to the job: written by the feedback path, which knows
  which variant served each impression.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request

from recflow.rollout.analysis import VariantMetrics


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or refused a query."""


class Prometheus:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> list[dict]:
        """The instant vector of ``promql`` now: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise PrometheusError(f"{promql!r}: HTTP {error.code}: {error.read().decode(errors='replace')}") from error
        except (urllib.error.URLError, OSError) as error:
            raise PrometheusError(f"Prometheus at {self.url} unreachable: {error}") from error
        if payload.get("status") != "success":
            raise PrometheusError(f"{promql!r}: {payload.get('error', payload)}")
        return payload["data"]["result"]

    def value(self, promql: str) -> float:
        """The sum of the vector's values; 0 for an empty vector (no such series yet)."""
        total = 0.0
        for sample in self.query(promql):
            value = float(sample["value"][1])
            total += 0.0 if math.isnan(value) else value
        return total


def variant_metrics(prometheus: Prometheus, job: str, window: str) -> VariantMetrics:
    """One variant's figures over the last ``window`` (a PromQL duration such as ``"60s"``)."""
    selector = f'job="{job}"'

    def increase(metric: str, extra: str = "") -> float:
        labels = selector + (f",{extra}" if extra else "")
        return prometheus.value(f"sum(increase({metric}{{{labels}}}[{window}]))")

    p99 = prometheus.value(
        f"histogram_quantile(0.99, sum by (le) (rate(recflow_request_seconds_bucket{{{selector}}}[{window}])))"
    )
    buckets = prometheus.query(f"sum by (le) (increase(recflow_served_score_bucket{{{selector}}}[{window}]))")
    cumulative = sorted((float(b["metric"]["le"]), float(b["value"][1])) for b in buckets)
    counts = tuple(max(count - previous, 0.0) for (_, count), (_, previous) in zip(cumulative, [(0, 0.0), *cumulative]))
    feedback = f'variant="{job}"'
    return VariantMetrics(
        requests=increase("recflow_requests_total", 'endpoint=~"v1|v2"'),
        errors=increase("recflow_requests_total", 'endpoint=~"v1|v2",status=~"5.."'),
        users=increase("recflow_batch_users_sum"),
        fallbacks=increase("recflow_fallback_total", 'reason!="unknown_user"'),
        p99_seconds=p99,
        impressions=prometheus.value(f"sum(increase(recflow_feedback_impressions_total{{{feedback}}}[{window}]))"),
        clicks=prometheus.value(f"sum(increase(recflow_feedback_clicks_total{{{feedback}}}[{window}]))"),
        score_counts=counts,
    )
