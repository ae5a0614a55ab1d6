"""Feedback ingestion: log each event once, then bring the online history up to date.

The path of an event, and why nothing is lost or counted twice across a restart:

1. :meth:`FeedbackIngestor.accept` appends the batch to the
   :class:`~recflow.feedback.log.FeedbackLog` (durable, duplicates by
   ``event_id`` dropped) and only then acknowledges it. The log is the
   offline record that retraining reads.
2. The click-through counters the canary analysis reads
   (``recflow_feedback_impressions_total`` / ``..._clicks_total`` by
   ``variant``) count the newly logged events only, so a retried batch is not
   counted again. Beside them, sums over *clusters* (one user's events in one
   batch: the items of their answers), from which the analysis takes the
   click-through rate's variance without assuming a user's k impressions are
   k independent trials (:func:`recflow.rollout.analysis.ctr_variance`).
3. A background thread pushes logged clicks to the online store with
   :func:`~recflow.features.online.push_clicks`, which skips clicks a user's
   row already holds (its feedback position). The store being down delays
   this, retried with back-off; it never loses a click, and the answer to the
   client does not wait for it.
4. At start, every click of the log is queued again: those the online store
   already holds are skipped by position, those that were logged but not yet
   pushed when the last process stopped are pushed now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from recflow.feedback.log import FeedbackEvent, FeedbackLog, clicks_frame
from recflow.features.online import push_clicks

log = logging.getLogger(__name__)

IMPRESSIONS = Counter("recflow_feedback_impressions", "Impressions logged, by the variant that served them", ["variant"])
CLICKS = Counter("recflow_feedback_clicks", "Clicks logged, by the variant that served them", ["variant"])
# Per variant, over clusters c (one user's newly logged events in one batch): the number of
# clusters, the sums of clicks_c², impressions_c² and clicks_c x impressions_c.
CLICK_CLUSTERS = Counter("recflow_feedback_clusters", "Feedback clusters (a user's events in one batch)", ["variant"])
CLUSTER_CLICKS_SQUARED = Counter(
    "recflow_feedback_cluster_clicks_squared", "Sum over feedback clusters of clicks squared", ["variant"]
)
CLUSTER_IMPRESSIONS_SQUARED = Counter(
    "recflow_feedback_cluster_impressions_squared", "Sum over feedback clusters of impressions squared", ["variant"]
)
CLUSTER_CLICKS_IMPRESSIONS = Counter(
    "recflow_feedback_cluster_clicks_impressions", "Sum over feedback clusters of clicks times impressions", ["variant"]
)
DUPLICATES = Counter("recflow_feedback_duplicates", "Events received again (same event_id) and dropped")
PENDING = Gauge("recflow_feedback_pending_clicks", "Clicks logged but not yet in the online store")
APPLY_ERRORS = Counter("recflow_feedback_apply_errors", "Failed pushes to the online store (retried)")
APPLY_SECONDS = Histogram(
    "recflow_feedback_apply_seconds",
    "Seconds from a click being logged to its push into the online store",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


@dataclass(frozen=True)
class Receipt:
    accepted: int
    duplicates: int
    last_sequence: int


class FeedbackIngestor:
    """Accepts feedback batches; a thread keeps the online store up to date with the log's clicks."""

    def __init__(self, store, feedback_log: FeedbackLog, max_retry_seconds: float = 5.0) -> None:
        self.store = store
        self.log = feedback_log
        self.max_retry_seconds = max_retry_seconds
        self._pending: list[tuple[str, str, object, int]] = []
        self._logged_at: list[float] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> FeedbackIngestor:
        """Queue the log's clicks for the online store (a no-op for those it holds) and start pushing."""
        replay = self.log.clicks()
        with self._lock:
            self._pending = list(replay.itertuples(index=False, name=None))
            self._logged_at = [time.monotonic()] * len(self._pending)
            PENDING.set(len(self._pending))
        log.info("feedback log %s: %d events, %d clicks to check online", self.log.path, len(self.log), len(replay))
        self._thread = threading.Thread(target=self._run, name="feedback-online", daemon=True)
        self._thread.start()
        self._wake.set()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pushing after a last attempt to bring the online store up to date."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def accept(self, events: Sequence[FeedbackEvent]) -> Receipt:
        appended = self.log.append(events)
        DUPLICATES.inc(appended.duplicates)
        clicks = []
        clusters: dict[tuple[str, str], list[int]] = {}  # (variant, user) -> [impressions, clicks]
        for sequence, event in appended.logged:
            IMPRESSIONS.labels(event.variant).inc()
            cluster = clusters.setdefault((event.variant, event.user_id), [0, 0])
            cluster[0] += 1
            if event.clicked:
                CLICKS.labels(event.variant).inc()
                cluster[1] += 1
                clicks.append((event.user_id, event.item_id, event.event_timestamp, sequence))
        for (variant, _), (impressions, clicked) in clusters.items():
            CLICK_CLUSTERS.labels(variant).inc()
            CLUSTER_CLICKS_SQUARED.labels(variant).inc(clicked * clicked)
            CLUSTER_IMPRESSIONS_SQUARED.labels(variant).inc(impressions * impressions)
            CLUSTER_CLICKS_IMPRESSIONS.labels(variant).inc(clicked * impressions)
        if clicks:
            with self._lock:
                self._pending.extend(clicks)
                self._logged_at.extend([time.monotonic()] * len(clicks))
                PENDING.set(len(self._pending))
            self._wake.set()
        return Receipt(len(appended.logged), appended.duplicates, self.log.last_sequence)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _run(self) -> None:
        backoff = 0.0
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            stopping = self._stop.is_set()
            with self._lock:
                batch, logged_at = self._pending, self._logged_at
                self._pending, self._logged_at = [], []
            if batch:
                try:
                    push_clicks(self.store, clicks_frame(batch))
                except Exception as error:  # the store's client raises its own types; any failure is retried
                    APPLY_ERRORS.inc()
                    self.last_error = f"{type(error).__name__}: {error}"
                    log.warning("online push of %d clicks failed, retrying: %s", len(batch), self.last_error)
                    with self._lock:  # back in front, in order
                        self._pending[:0], self._logged_at[:0] = batch, logged_at
                    backoff = min(max(2 * backoff, 0.1), self.max_retry_seconds)
                    if stopping:
                        return
                    self._stop.wait(backoff)
                    self._wake.set()
                    continue
                now = time.monotonic()
                for started in logged_at:
                    APPLY_SECONDS.observe(now - started)
                self.last_error, backoff = None, 0.0
            with self._lock:
                PENDING.set(len(self._pending))
            if stopping:
                return

