"""Export counts scores over the buckets the model server's histogram uses, exactly as Prometheus counts them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from recflow.monitoring.scores import SCORE_BUCKETS, bucket_counts
from serving.metrics import SCORES, BatchHistogram


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


def test_a_batch_histogram_exposes_what_a_histogram_observing_each_value_exposes():
    """The server counts a call's scores in one pass; /metrics must read as if each had been observed."""
    values = [-0.5, 0.0, 0.05, 0.0500001, 0.1, 0.42, 0.95, 0.999, 1.0, 1.5, 7.0, float("nan")]
    buckets = (0.05, 0.1, 0.5, 1.0, 2.592e6)
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("ages", "", buckets=buckets, registry=one_by_one)
    for value in values[:-1]:
        histogram.observe(value)
    batch = BatchHistogram("ages", "", buckets=buckets, registry=batched)
    batch.observe_many(values[:4])
    batch.observe_many(iter(values[4:]))  # NaN left out
    batch.observe_many([])

    def samples(registry):
        return {
            (sample.name, tuple(sample.labels.items())): sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if not sample.name.endswith("_created")
        }

    assert samples(batched) == samples(one_by_one)
    assert samples(batched)[("ages_count", ())] == 11
