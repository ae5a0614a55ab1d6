"""Export counts scores over the buckets the model server's histogram uses, exactly as Prometheus counts them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from recflow.monitoring.scores import SCORE_BUCKETS, bucket_counts
from serving.metrics import SCORES


def test_the_server_counts_over_the_same_buckets():
    bounds = [float(sample.labels["le"]) for sample in SCORES.collect()[0].samples if sample.name.endswith("_bucket")]
    assert tuple(bounds) == (*SCORE_BUCKETS, float("inf"))


def test_scores_fall_in_the_buckets_prometheus_puts_them_in():
    scores = [-0.5, 0.0, 0.05, 0.0500001, 0.1, 0.42, 0.95, 0.999, 1.0, 1.5, 7.0]
    registry = CollectorRegistry()
    histogram = Histogram("scores", "", buckets=SCORE_BUCKETS, registry=registry)
    for score in scores:
        histogram.observe(score)
    # What /metrics exposes: cumulative counts per upper bound, +Inf last.
    cumulative = [sample.value for metric in registry.collect() for sample in metric.samples if sample.name == "scores_bucket"]
    prometheus = [count - previous for count, previous in zip(cumulative, [0, *cumulative])]
    assert list(bucket_counts(scores)) == prometheus
    assert bucket_counts([]) == (0,) * (len(SCORE_BUCKETS) + 1)
