"""What the canary analysis measures, read from Prometheus over its HTTP API.

A :class:`VariantSelector` picks one variant's series with PromQL label
matchers: on the local platform the scrape ``job`` named after the server
(and the feedback counters' ``variant`` label of the same name); on a cluster
the Knative revision or the Deployment's pods of the variant
(:mod:`recflow.kubernetes.inferenceservice`). The queries are the same for
both. A variant's :class:`VariantMetrics` are the increases over the last
``seconds`` (the rollout's current step so far) of:

- ``recflow_requests_total`` (inference endpoints; 5xx among them are errors),
- ``recflow_batch_users_sum`` (users answered) and
  ``recflow_fallback_total`` (users answered by a fallback, cold starts
  excepted: an unknown user is not a failure of the model),
- ``recflow_request_seconds`` (p99 from the histogram),
- ``recflow_served_score`` (the histogram's per-bucket counts),
- ``recflow_feedback_impressions_total`` / ``recflow_feedback_clicks_total``
  selected by the feedback matchers: written by the feedback path, which knows
  which variant served each impression; with them the sums over a user's
  feedback clusters (``recflow_feedback_clusters_total`` and
  ``recflow_feedback_cluster_*_total``) that the click-through rate's variance
  is taken from.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from recflow.rollout.analysis import ClickClusters, VariantMetrics


@dataclass(frozen=True)
class VariantSelector:
    """PromQL label matchers of one variant: ``server`` for its model servers' series, ``feedback`` for its feedback counters."""

    server: str
    feedback: str

    @classmethod
    def local(cls, job: str) -> VariantSelector:
        """The local platform's: the scrape job named after the server, and the same name as the feedback variant."""
        return cls(server=f'job="{job}"', feedback=f'variant="{job}"')


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


def variant_metrics(prometheus: Prometheus, variant: str | VariantSelector, seconds: float) -> VariantMetrics:
    """One variant's figures over the last ``seconds``.

    ``variant``: its selector, or a local platform job name (``"stable"``, ``"canary"``).
    """
    chosen = variant if isinstance(variant, VariantSelector) else VariantSelector.local(variant)
    selector = chosen.server
    window = f"{round(seconds * 1000)}ms"  # PromQL durations take whole units

    def increase(metric: str, extra: str = "") -> float:
        labels = selector + (f",{extra}" if extra else "")
        return prometheus.value(f"sum(increase({metric}{{{labels}}}[{window}]))")

    p99 = prometheus.value(
        f"histogram_quantile(0.99, sum by (le) (rate(recflow_request_seconds_bucket{{{selector}}}[{window}])))"
    )
    buckets = prometheus.query(f"sum by (le) (increase(recflow_served_score_bucket{{{selector}}}[{window}]))")
    cumulative = sorted((float(b["metric"]["le"]), float(b["value"][1])) for b in buckets)
    counts = tuple(max(count - previous, 0.0) for (_, count), (_, previous) in zip(cumulative, [(0, 0.0), *cumulative]))

    def feedback(metric: str) -> float:
        return prometheus.value(f"sum(increase({metric}{{{chosen.feedback}}}[{window}]))")

    clusters = ClickClusters(
        clusters=feedback("recflow_feedback_clusters_total"),
        clicks_squared=feedback("recflow_feedback_cluster_clicks_squared_total"),
        impressions_squared=feedback("recflow_feedback_cluster_impressions_squared_total"),
        clicks_impressions=feedback("recflow_feedback_cluster_clicks_impressions_total"),
    )
    return VariantMetrics(
        requests=increase("recflow_requests_total", 'endpoint=~"v1|v2"'),
        errors=increase("recflow_requests_total", 'endpoint=~"v1|v2",status=~"5.."'),
        users=increase("recflow_batch_users_sum"),
        fallbacks=increase("recflow_fallback_total", 'reason!="unknown_user"'),
        p99_seconds=p99,
        impressions=feedback("recflow_feedback_impressions_total"),
        clicks=feedback("recflow_feedback_clicks_total"),
        score_counts=counts,
        # A feedback path without the cluster counters (their series absent): impressions as independent.
        click_clusters=clusters if clusters.clusters > 0 else None,
    )
