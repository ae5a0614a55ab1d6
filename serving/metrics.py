"""The recommender server's Prometheus metrics, served on ``/metrics`` beside KServe's own.

Names are the contract the rollout analysis and the alerting rules query;
change them only together with those.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from recflow.monitoring.scores import SCORE_BUCKETS, bucket_counts


class BatchHistogram(Collector):
    """A Prometheus histogram fed a model call's values at once: one numpy pass, not one ``observe`` each.

    A call of 8 users serves 80 scores; ``Histogram.observe`` on each took
    about as long as the index search, on the thread every call waits for.
    The buckets are counted by :func:`~recflow.monitoring.scores.bucket_counts`,
    Prometheus' own rule, and exposed as a histogram (``_bucket``, ``_sum``,
    ``_count``), so queries see no difference. NaN values are left out.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry = REGISTRY):
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(bound) for bound in buckets)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # per bucket, +Inf last; not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()  # scrapes read from the event loop while a model call adds
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        values = np.fromiter(values, dtype=float)
        values = values[~np.isnan(values)]
        if not len(values):
            return
        counts = np.asarray(bucket_counts(values, self.bounds), dtype=np.int64)
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> list[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        bounds = [*map(floatToGoString, self.bounds), "+Inf"]
        buckets = list(zip(bounds, cumulative.tolist()))
        return [HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)]


# Stage latencies are per model call (one micro-batch), in seconds.
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

STAGE_SECONDS = Histogram(
    "recflow_stage_seconds",
    "Seconds one batch spent in a stage: features, retrieval, ranking, reranking",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
REQUEST_SECONDS = Histogram(
    "recflow_request_seconds",
    "Seconds from a request reaching the model to its answer, queueing included",
    ["protocol"],
    buckets=STAGE_BUCKETS,
)
REQUESTS = Counter("recflow_requests_total", "HTTP requests by endpoint and status code", ["endpoint", "status"])
FALLBACKS = Counter("recflow_fallback_total", "Users answered by a fallback, by reason", ["reason"])
BATCH_USERS = Histogram(
    "recflow_batch_users", "Users per model call (micro-batch)", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
SCORES = BatchHistogram(
    "recflow_served_score",
    "Scores of the items the model stack served (fallback answers excluded)",
    buckets=SCORE_BUCKETS,
)
FEATURE_AGE = BatchHistogram(
    "recflow_feature_age_seconds",
    "Age of the newest online user feature row served, at request time",
    buckets=(1, 10, 60, 600, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400),
)
MODEL_INFO = Info("recflow_model", "The bundle being served")
