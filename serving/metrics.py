"""The recommender server's Prometheus metrics, served on ``/metrics`` beside KServe's own.

Names are the contract the rollout analysis and the alerting rules query;
change them only together with those.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, Info

from recflow.monitoring.scores import SCORE_BUCKETS

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
SCORES = Histogram(
    "recflow_served_score",
    "Scores of the items the model stack served (fallback answers excluded)",
    buckets=SCORE_BUCKETS,
)
FEATURE_AGE = Histogram(
    "recflow_feature_age_seconds",
    "Age of the newest online user feature row served, at request time",
    buckets=(1, 10, 60, 600, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400),
)
MODEL_INFO = Info("recflow_model", "The bundle being served")
