"""Canary figures read through a real Prometheus (Debian package) scraping two variants.

Two exporters on loopback stand in for the stable and the canary servers:
they expose the recommender server's metric names (serving/metrics.py) with
counts this test drives, so the expected figures are known. Prometheus
scrapes them every second; :func:`variant_metrics` reads them with PromQL and
the analysis decides.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from recflow.rollout.analysis import AnalysisConfig, analyse
from recflow.rollout.prometheus import Prometheus, PrometheusError, variant_metrics
from serving.process import free_port

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus missing (Debian package prometheus; .ci/run installs it)"
)

SCORE_BUCKETS = (0.25, 0.5, 0.75, 1.0)


class Variant:
    """One server's metrics in its own registry, served on a free port."""

    def __init__(self, name: str):
        self.name = name
        self.registry = CollectorRegistry()
        self.requests = Counter("recflow_requests_total", "", ["endpoint", "status"], registry=self.registry)
        self.users = Histogram("recflow_batch_users", "", buckets=(1, 8), registry=self.registry)
        self.fallbacks = Counter("recflow_fallback_total", "", ["reason"], registry=self.registry)
        self.latency = Histogram("recflow_request_seconds", "", ["protocol"], buckets=(0.01, 0.05, 0.1, 0.5), registry=self.registry)
        self.scores = Histogram("recflow_served_score", "", buckets=SCORE_BUCKETS, registry=self.registry)
        self.impressions = Counter("recflow_feedback_impressions_total", "", ["variant"], registry=self.registry)
        self.clicks = Counter("recflow_feedback_clicks_total", "", ["variant"], registry=self.registry)
        self.clusters = {
            name: Counter(f"recflow_feedback_{name}_total", "", ["variant"], registry=self.registry)
            for name in ("clusters", "cluster_clicks_squared", "cluster_impressions_squared", "cluster_clicks_impressions")
        }
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def serve(self, n: int, errors: int, seconds: float, score: float, clicks: int) -> None:
        """One tick of traffic: n requests (errors of them 5xx), one user each, 10 impressions each,
        the clicks one per user (a feedback cluster per user, as the feedback ingestion counts them)."""
        self.requests.labels("v1", "200").inc(n - errors)
        self.requests.labels("v1", "500").inc(errors)
        for _ in range(n):
            self.users.observe(1)
            self.latency.labels("v1").observe(seconds)
            self.scores.observe(score)
        self.impressions.labels(self.name).inc(10 * n)
        self.clicks.labels(self.name).inc(clicks)
        for name, value in (("clusters", n), ("cluster_clicks_squared", clicks),
                            ("cluster_impressions_squared", 100 * n), ("cluster_clicks_impressions", 10 * clicks)):  # fmt: skip
            self.clusters[name].labels(self.name).inc(value)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    stable, canary = Variant("stable"), Variant("canary")
    port = free_port()
    (tmp / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
        + "".join(
            f"  - job_name: {v.name}\n    static_configs:\n      - targets: ['127.0.0.1:{v.port}']\n" for v in (stable, canary)
        )
    )
    process = subprocess.Popen(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError((tmp / "prometheus.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        # 12 s of traffic, 100 requests/s each: the canary errs on 10%, is 4x slower, scores
        # everything high, and is clicked half as often.
        for _ in range(48):
            stable.serve(25, errors=0, seconds=0.02, score=0.4, clicks=25)
            canary.serve(25, errors=2, seconds=0.3, score=0.9, clicks=12)
            time.sleep(0.25)
        time.sleep(2.5)  # the last scrape
        yield Prometheus(f"http://127.0.0.1:{port}"), stable, canary
    finally:
        process.terminate()
        process.wait(20)
        stable.server.shutdown()
        canary.server.shutdown()


def test_variant_figures_come_back_from_promql(scraped):
    prometheus, _, _ = scraped
    stable = variant_metrics(prometheus, "stable", 10.0)
    canary = variant_metrics(prometheus, "canary", 10.0)
    # increase() extrapolates over the window: rates are exact, counts approximately 10 s worth.
    assert 600 < stable.requests < 1400 and 600 < canary.requests < 1400
    assert stable.errors == 0
    assert canary.errors / canary.requests == pytest.approx(2 / 25, rel=0.05)
    # A scrape can land inside a tick (its 25 requests counted, some of its users not yet): up to a tick
    # apart at each end of the window, over 800-1,000 requests when the machine is busy.
    assert stable.users == pytest.approx(stable.requests, rel=0.1)
    assert stable.p99_seconds <= 0.05 < 0.1 < canary.p99_seconds <= 0.5
    assert canary.clicks / canary.impressions == pytest.approx(12 / 250, rel=0.05)
    clusters = canary.click_clusters
    assert clusters.clusters == pytest.approx(canary.requests, rel=0.05)
    assert clusters.impressions_squared / clusters.clusters == pytest.approx(100, rel=0.05)
    assert clusters.clicks_squared / clusters.clusters == pytest.approx(12 / 25, rel=0.05)
    assert clusters.clicks_impressions / clusters.clicks_squared == pytest.approx(10, rel=0.05)
    assert len(stable.score_counts) == len(SCORE_BUCKETS) + 1  # and +Inf
    assert max(range(len(stable.score_counts)), key=stable.score_counts.__getitem__) == 1  # 0.4 -> (0.25, 0.5]
    assert max(range(len(canary.score_counts)), key=canary.score_counts.__getitem__) == 3  # 0.9 -> (0.75, 1.0]


def test_the_analysis_rolls_the_faulty_canary_back_on_those_figures(scraped):
    prometheus, _, _ = scraped
    decision = analyse(
        variant_metrics(prometheus, "stable", 10.0),
        variant_metrics(prometheus, "canary", 10.0),
        5,
        AnalysisConfig(min_requests=100, min_impressions=1000),
    )
    assert decision.action == "rollback"
    assert {c.name for c in decision.checks if not c.passed} == {
        "error rate", "p99 latency", "score distribution", "click-through rate"
    }
    # The stable variant measured against itself passes every check.
    stable = variant_metrics(prometheus, "stable", 10.0)
    assert analyse(stable, stable, 100, AnalysisConfig(min_requests=100, min_impressions=1000)).action == "promote"


def test_an_unreachable_prometheus_is_named():
    with pytest.raises(PrometheusError, match="unreachable"):
        Prometheus(f"http://127.0.0.1:{free_port()}", timeout=1).value("up")


def test_a_bad_query_is_named(scraped):
    prometheus, _, _ = scraped
    with pytest.raises(PrometheusError, match="sum\\(\\("):
        prometheus.value("sum((")
