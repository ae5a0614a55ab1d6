"""Drift of live traffic from the training snapshot, watched while a model serves.

Two distributions of item categories are compared with one reference, each
by the Jensen–Shannon divergence (:mod:`recflow.monitoring.drift`):

- ``served_category``: what the model serves, the prediction side;
- ``clicked_category``: what users click. Clicks become the users' history
  features (``user_recent_item_ids``), so this is the input side, and it is
  where a change of taste shows first.

The reference is the training snapshot seen through the model: the top-k
the bundle's own stack serves to the training data's most recent users, with
their features as of the snapshot. While tastes hold, users click roughly
the mix they are shown; when tastes move, clicks leave it. Comparing live
clicks with the clicks *logged* in the training data instead would flag the
model's own policy as drift: on the demo world that gave 0.040-0.053 without
drift and 0.071 with it, where the served reference gives 0.009-0.018
(windows of 500 to 2,600 clicks, tastes as trained) against 0.034-0.036
(tastes moved all the way, ``recflow simulate --drift-strength 1``).

Export writes the reference into the bundle (``drift_reference.json``,
:func:`write_reference`); the ``monitor`` process (:class:`LiveDriftMonitor`)
follows the feedback log, compares the newest events of the model the stable
variant serves with that model's reference, and exports the gauges the
alerting rules and the retraining trigger read.

The same lists give the bundle's served-score histogram
(:class:`recflow.monitoring.scores.ScoreReference`, read by
:func:`read_score_reference`): the canary analysis judges a model's live
scores against the scores it gave at export (:mod:`recflow.rollout.analysis`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from recflow.feedback.log import FeedbackLog
from recflow.monitoring.drift import DriftConfig, DriftReference, DriftReport, publish
from recflow.monitoring.scores import SCORE_BUCKETS, ScoreReference, bucket_counts

log = logging.getLogger(__name__)

REFERENCE_FILE = "drift_reference.json"
SCORES_KEY = "served_scores"
CLICKED = "clicked_category"
SERVED = "served_category"
CATEGORY_COLUMN = "item_category"
STABLE_VARIANT = "stable"


class MonitorConfig(BaseModel):
    """How the live monitor windows, and when a divergence counts as drift."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clicked_js_threshold: float = Field(
        0.025, gt=0, description="JS (nats) of clicked categories above this is drift (see the module docstring)"
    )
    served_js_threshold: float = Field(0.05, gt=0, description="JS (nats) of served categories above this is drift")
    min_clicks: int = Field(300, ge=1, description="Clicks a window needs before its clicked score gives a verdict")
    min_impressions: int = Field(2000, ge=1, description="Impressions a window needs before its served score does")
    window_events: int = Field(20_000, ge=1, description="Newest feedback events of the monitored model in a window")
    interval_seconds: float = Field(5.0, gt=0, description="Seconds between two looks at the feedback log")
    reference_days: int = Field(3, ge=1, description="Last days of the training data the reference users come from")
    reference_users: int = Field(1000, ge=1, description="Recent users whose served lists form the reference")

    def drift_config(self, column: str) -> DriftConfig:
        if column == CLICKED:
            return DriftConfig(categorical=[CLICKED], js_threshold=self.clicked_js_threshold, min_rows=self.min_clicks)
        return DriftConfig(categorical=[SERVED], js_threshold=self.served_js_threshold, min_rows=self.min_impressions)


def fit_references(served_items: Sequence[str], categories: pd.Series, config: MonitorConfig) -> dict[str, DriftReference]:
    """Both references from the items a model served, mapped to ``categories`` (item_id -> category)."""
    return {
        column: DriftReference.fit(_categories_frame(column, served_items, categories), config.drift_config(column))
        for column in (CLICKED, SERVED)
    }


def bundle_references(dataset, stack, store, service: str, snapshot_at: pd.Timestamp, k: int, config: MonitorConfig):
    """The references of a bundle being exported, its served-score histogram, and the window they describe.

    ``stack`` (the bundle's, with its on-demand transforms) serves its top-k
    with the users' features as of ``snapshot_at``, the instant the bundle's
    item snapshot is taken:

    - for the drift references, to the ``reference_users`` who clicked most
      recently in the dataset's last ``reference_days``: the categories of
      recent interest;
    - for the score histogram, to as many users drawn uniformly from all the
      dataset's users, their seen items excluded, as live traffic is served:
      users who never clicked score differently from recent clickers, and a
      reference without them would differ from any sound model's live scores.
    """
    from recflow.features.training_set import entity_features_as_of
    from recflow.recommender.online import seen_items

    days = dataset.days()
    start = days[max(len(days) - config.reference_days, 0)]
    recent = dataset.read_events(start=start, columns=["user_id", "event_timestamp", "clicked"])
    clicks = recent[recent["clicked"]]
    if clicks.empty:
        raise ValueError(f"no clicks from {start} on: no recent users to draw the drift reference from")
    latest = clicks.groupby("user_id")["event_timestamp"].max().sort_values(ascending=False, kind="stable")
    users = latest.index.astype(str)[: config.reference_users].tolist()
    features = entity_features_as_of(store, service, "user", users, snapshot_at)
    served = [item for items in stack.recommend(features, k, {}, snapshot_at) for item, _ in items]
    categories = pd.Series(stack.items[CATEGORY_COLUMN].astype(str).to_numpy(), index=stack.items["item_id"].astype(str))
    window = {"from": start.isoformat(), "to": days[-1].isoformat(), "users": len(users), "k": k, "items": len(served)}

    everyone = dataset.read_users()["user_id"].astype(str).drop_duplicates()
    drawn = everyone.sample(n=min(config.reference_users, len(everyone)), random_state=0).tolist()
    features = entity_features_as_of(store, service, "user", drawn, snapshot_at)
    lists = stack.recommend(features, k, dict(zip(features["user_id"].astype(str), seen_items(features))), snapshot_at)
    scores = ScoreReference(bucket_counts(score for items in lists for _, score in items), sum(1 for items in lists if items))
    return fit_references(served, categories, config), scores, window


def write_reference(bundle: Path, references: dict[str, DriftReference], scores: ScoreReference, window: dict) -> Path:
    """``drift_reference.json`` in the bundle: both references, the served-score histogram, the window they describe."""
    path = Path(bundle) / REFERENCE_FILE
    document = {
        "window": window,
        "references": {name: reference.to_dict() for name, reference in references.items()},
        SCORES_KEY: {"buckets": list(SCORE_BUCKETS), "counts": list(scores.counts), "answers": scores.answers},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def read_references(bundle: Path, config: MonitorConfig) -> dict[str, DriftReference] | None:
    """A bundle's references under ``config``'s thresholds; None if the bundle predates them."""
    path = Path(bundle) / REFERENCE_FILE
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())["references"]
    references = {}
    for name, data in stored.items():
        reference = DriftReference.from_dict(data)
        references[name] = DriftReference(config.drift_config(name), reference.edges, reference.shares, reference.rows)
    return references


def read_score_reference(bundle: Path) -> ScoreReference | None:
    """A bundle's served-score histogram at export; None if the bundle predates it, or it is empty or over other buckets."""
    path = Path(bundle) / REFERENCE_FILE
    stored = json.loads(path.read_text()).get(SCORES_KEY) if path.is_file() else None
    if stored is None or tuple(stored["buckets"]) != SCORE_BUCKETS or sum(stored["counts"]) <= 0:
        return None
    return ScoreReference(tuple(stored["counts"]), stored["answers"])


def bundle_categories(bundle: Path) -> pd.Series:
    """item_id -> category of the bundle's item snapshot."""
    items = pd.read_parquet(Path(bundle) / "item_features.parquet", columns=["item_id", CATEGORY_COLUMN])
    return pd.Series(items[CATEGORY_COLUMN].astype(str).to_numpy(), index=items["item_id"].astype(str))


def _categories_frame(column: str, item_ids: Sequence[str], categories: pd.Series) -> pd.DataFrame:
    # An item the snapshot does not know (one created since) counts as its own "unknown" category.
    return pd.DataFrame({column: pd.Series(list(item_ids), dtype=object).map(categories).fillna("unknown")})


class LiveDriftMonitor:
    """Follows a feedback log and scores the stable model's newest events against its bundle's references.

    The monitored model is the one the latest event of the stable variant
    names (``model_version``); ``locate(version)`` finds its bundle directory
    (None: unknown). After a promotion the window starts again with the new
    model's events. ``stable_variant()``, asked at every poll, names that
    variant: ``stable`` on the local platform (the proxy's slot names), on a
    cluster the InferenceService's rolled-out revision or stable Deployment
    (:func:`recflow.monitoring.service.cluster_stable_variant`).
    """

    def __init__(
        self,
        log_path: Path,
        locate: Callable[[str], Path | None],
        config: MonitorConfig,
        stable_variant: Callable[[], str] = lambda: STABLE_VARIANT,
    ) -> None:
        self.log = FeedbackLog(log_path)
        self.locate = locate
        self.config = config
        self.stable_variant = stable_variant
        self.version: str | None = None
        self.references: dict[str, DriftReference] | None = None
        self.categories: pd.Series | None = None
        self.window: deque[tuple[str, bool]] = deque(maxlen=config.window_events)
        self.position = 0
        self.report: dict = {"status": "waiting for feedback from the stable model"}
        self._lock = threading.Lock()

    def poll(self) -> dict:
        """Read the events logged since the last poll, score the window, publish the gauges; the report."""
        if not self.log.path.exists():
            return self.report
        stable = self.stable_variant()
        for sequence, event in self.log.read(after=self.position):
            self.position = sequence
            if event.variant != stable or not event.model_version:
                continue
            if event.model_version != self.version:
                self._follow(event.model_version)
            self.window.append((event.item_id, event.clicked))
        if self.references is not None and self.window:
            report = self._score()
            with self._lock:
                self.report = report
        return self.current()

    def current(self) -> dict:
        with self._lock:
            return dict(self.report)

    def _follow(self, version: str) -> None:
        bundle = self.locate(version)
        self.version = version
        self.window.clear()
        self.references = read_references(bundle, self.config) if bundle is not None else None
        if self.references is None:
            where = f"its bundle {bundle} has no {REFERENCE_FILE}" if bundle is not None else "its bundle was not found"
            reason = f"model {version}: {where}; its drift is not monitored"
            log.warning(reason)
            self.report = {"status": reason, "model_version": version}
            return
        self.categories = bundle_categories(bundle)
        log.info("monitoring drift of model %s", version)

    def _score(self) -> dict:
        items = np.array([item for item, _ in self.window], dtype=object)
        clicked = np.array([was_clicked for _, was_clicked in self.window], dtype=bool)
        reports: dict[str, DriftReport] = {
            CLICKED: self.references[CLICKED].compare(_categories_frame(CLICKED, items[clicked], self.categories)),
            SERVED: self.references[SERVED].compare(_categories_frame(SERVED, items, self.categories)),
        }
        publish(*reports.values())
        return {
            "status": "monitoring",
            "model_version": self.version,
            "drifted": any(report.drifted for report in reports.values()),
            "windows": {name: report.to_dict() for name, report in reports.items()},
        }
