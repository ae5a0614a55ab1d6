"""Retraining's pieces: the feedback folded into a dataset once, and the trigger's verdict.

The whole loop (drift, retraining on the platform, rollout) runs in
tests/platform/test_platform.py.
"""

from __future__ import annotations

import datetime as dt
import threading

import pandas as pd
import pytest

from recflow.data.dataset import GROUND_TRUTH_DIR, Dataset, write_dataset
from recflow.data.world import generate_world, world_config
from recflow.features.compute import compute_features, feedback_positions
from recflow.feedback.log import FeedbackEvent, FeedbackLog
from recflow.pipeline.retrain import RetrainConfig, fold_feedback, training_dataset, trigger_reason


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Dataset:
    world = generate_world(world_config("tiny"))
    path = tmp_path_factory.mktemp("retrain") / "base"
    manifest = {"source": "world", "scale": "tiny", "seed": 0}
    return write_dataset(path, world.events, world.items, world.users, manifest,
                         extra=lambda tmp: world.ground_truth.save(tmp / GROUND_TRUTH_DIR))  # fmt: skip


def log_events(log: FeedbackLog, base: Dataset, count: int, start: dt.datetime) -> None:
    users = pd.read_parquet(base.path / "users.parquet")["user_id"].tolist()
    items = pd.read_parquet(base.path / "items.parquet")["item_id"].tolist()
    offset = len(log)
    log.append([
        FeedbackEvent(event_id=f"live-{offset + n}", user_id=users[n % len(users)], item_id=items[n % len(items)],
                      event_timestamp=start + dt.timedelta(seconds=10 * n), clicked=n % 3 == 0, variant="stable")
        for n in range(count)
    ])  # fmt: skip


def test_feedback_is_folded_in_after_the_data_in_order_and_only_once(base, tmp_path):
    live = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)  # wall-clock, months after the world's days
    with FeedbackLog(tmp_path / "events.jsonl") as log:
        log_events(log, base, 30, live)
        first, folded = fold_feedback(base, log, tmp_path / "first")
        assert folded == 30
        next_day = base.days()[-1] + dt.timedelta(days=1)
        added = first.read_events(start=next_day)
        assert len(added) == 30 and added["event_id"].str.startswith("live-").all()
        assert first.days()[-2:] == [next_day, next_day + dt.timedelta(days=1)]  # spread over 2 days
        assert added["event_timestamp"].min() == pd.Timestamp(next_day, tz="UTC")
        assert added.sort_values("event_timestamp")["event_id"].tolist() == [f"live-{n}" for n in range(30)]
        gaps = added.sort_values("event_timestamp")["event_timestamp"].diff().dropna()
        assert (gaps - gaps.iloc[0]).abs().max() < pd.Timedelta(milliseconds=1)  # evenly, as logged
        assert len(first.read_events()) == len(base.read_events()) + 30
        assert first.manifest["feedback_folds"][-1]["last_sequence"] == 30 and first.manifest["scale"] == "tiny"
        assert sorted(p.name for p in first.ground_truth_dir.iterdir()) == sorted(p.name for p in base.ground_truth_dir.iterdir())

        log_events(log, base, 5, live + dt.timedelta(hours=1))
        second, folded = fold_feedback(first, log, tmp_path / "second")
        assert folded == 5  # the 30 the first fold holds are not trained on twice
        assert len(second.read_events()) == len(first.read_events()) + 5
        with pytest.raises(ValueError, match="no events after position 35"):
            fold_feedback(second, log, tmp_path / "third")
    assert not (tmp_path / "third").exists()


def test_the_training_dataset_comes_from_the_model_card(base):
    assert training_dataset({"version": "v1", "data": {"dataset": str(base.path)}}).path == base.path
    with pytest.raises(ValueError, match="does not record its dataset"):
        training_dataset({"version": "v0", "data": {}})
    with pytest.raises(FileNotFoundError, match="which is gone"):
        training_dataset({"version": "v1", "data": {"dataset": str(base.path / "missing")}})


class FakePrometheus:
    """Answers the drift query as Prometheus' HTTP API would (the real one is exercised on the platform)."""

    def __init__(self, value: float | None):
        self.value = value

    def query(self, promql: str) -> list[dict]:
        assert promql == 'max(recflow_drift_detected{job="monitor"})'
        return [] if self.value is None else [{"metric": {}, "value": [0, str(self.value)]}]


def test_the_trigger_fires_on_drift_or_schedule_only():
    drift_only = RetrainConfig()
    assert trigger_reason(FakePrometheus(1.0), drift_only, 0) == "drift"
    assert trigger_reason(FakePrometheus(0.0), drift_only, 10**9) is None
    assert trigger_reason(FakePrometheus(None), drift_only, 0) is None  # no monitor scraped yet
    scheduled = RetrainConfig(on_drift=False, every_hours=24)
    assert trigger_reason(FakePrometheus(1.0), scheduled, 3600) is None
    assert trigger_reason(FakePrometheus(0.0), scheduled, 24 * 3600) == "schedule"
    with pytest.raises(ValueError, match="extra"):
        RetrainConfig(on_drfit=True)
    with pytest.raises(ValueError, match="set by the retraining"):
        RetrainConfig(parameters={"test_days": 3})


def test_history_snapshots_of_folded_days_hold_the_folds_log_position(base, tmp_path):
    """So a feedback service replaying its log into a store materialized from them skips those clicks."""
    live = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
    with FeedbackLog(tmp_path / "events.jsonl") as log:
        log_events(log, base, 30, live)
        folded, _ = fold_feedback(base, log, tmp_path / "folded")
        log_events(log, base, 30, live + dt.timedelta(hours=1))
        twice, _ = fold_feedback(folded, log, tmp_path / "twice")
    compute_features(twice, tmp_path / "offline")
    positions = feedback_positions(twice)
    first_fold, second_fold = (dt.date.fromisoformat(f["replayed_onto"]) for f in twice.manifest["feedback_folds"])
    assert [positions(base.days()[-1]), positions(first_fold), positions(second_fold)] == [0, 30, 60]
    history = {path.stem: pd.read_parquet(path) for path in (tmp_path / "offline" / "user_history").glob("*.parquet")}
    assert set(history[base.days()[-1].isoformat()]["user_feedback_seq"]) == {0}
    assert set(history[first_fold.isoformat()]["user_feedback_seq"]) == {30}
    assert set(history[second_fold.isoformat()]["user_feedback_seq"]) == {60}


class Watched:
    """A retraining watch with fakes: a clock that the watch's waits move, a retraining that is
    recorded and fails (the failures are what is tested; real retrainings run in tests/platform),
    and the cluster settings, which spare the local platform; nothing is contacted. Each test's
    Prometheus is a script of verdicts (unreachable, then drift, ...): the sequence over hours of
    waits is the point, which a real Prometheus fed by a real monitor gives in tests/platform's
    demo, not on cue."""

    def __init__(self, monkeypatch, prometheus) -> None:
        from recflow.pipeline import retrain as retraining

        self.now = 0.0
        self.attempts: list[float] = []
        self.retraining = retraining
        monkeypatch.setattr("recflow.rollout.prometheus.Prometheus", prometheus)
        monkeypatch.setattr(retraining, "retrain", self._retrain)

    def _retrain(self, workspace, config, reason):
        self.attempts.append(self.now)
        raise RuntimeError("pipeline run ended FAILED")

    def watch(self, workspace, cooldown_minutes: float, hours: float, keep_going: bool = True):
        from recflow.kubernetes.rollout import ClusterRolloutConfig

        watched = self

        class Clock(threading.Event):
            def wait(self, timeout=None) -> bool:
                watched.now += timeout
                if watched.now >= hours * 3600:
                    self.set()
                return self.is_set()

        config = RetrainConfig(host="http://ml-pipeline.kubeflow:8888", poll_seconds=60, cooldown_minutes=cooldown_minutes,
                               cluster=ClusterRolloutConfig(prometheus_url="http://prometheus.invalid"))  # fmt: skip
        return self.retraining.watch(workspace, config, Clock(), clock=lambda: self.now, keep_going=keep_going)


def test_a_watch_that_keeps_going_survives_failures_and_keeps_the_cooldown(monkeypatch):
    """What the chart's retraining pod runs (``recflow retrain --watch``): an unreachable Prometheus
    and a retraining that fails are logged, not fatal, and a failed retraining counts for the
    cooldown, so a run that always fails is not started at every poll. Without ``keep_going`` the
    failure is raised. Faked: Prometheus, whose first read fails, and the rest as in ``Watched``."""
    from recflow.rollout.prometheus import Prometheus

    class Verdicts(Prometheus):
        """Unreachable at the first read, then drift for good."""

        reads = 0

        def query(self, promql: str) -> list[dict]:
            Verdicts.reads += 1
            if Verdicts.reads == 1:
                raise ConnectionError("Prometheus is not up yet")
            return [{"metric": {}, "value": [0, "1"]}]

    watched = Watched(monkeypatch, Verdicts)
    assert watched.watch("/nowhere", cooldown_minutes=60, hours=3) == []
    assert watched.attempts == [60, 3660, 7260]  # after the failed read, then once an hour

    Verdicts.reads, watched.now = 0, 0.0
    with pytest.raises(ConnectionError):
        watched.watch("/nowhere", cooldown_minutes=60, hours=3, keep_going=False)


def test_a_restarted_watch_keeps_the_cooldown_of_the_workspaces_last_retraining(monkeypatch, tmp_path):
    """The chart's retraining pod may restart (an upgrade, a node drained) while the drift verdict
    still stands: the cooldown counts from the workspace's last retraining, which started 10 minutes
    ago here (its dataset's name), not from the restart. Faked: Prometheus (drift for good), and
    the rest as in ``Watched``."""
    from recflow.rollout.prometheus import Prometheus

    class Drift(Prometheus):
        def query(self, promql: str) -> list[dict]:
            return [{"metric": {}, "value": [0, "1"]}]

    ten_minutes_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)
    (tmp_path / "datasets" / f"retrain-{ten_minutes_ago:%Y%m%d-%H%M%S}").mkdir(parents=True)
    (tmp_path / "datasets" / "retrain-notes").mkdir()  # not a retraining's name: ignored
    watched = Watched(monkeypatch, Drift)
    watched.watch(tmp_path, cooldown_minutes=30, hours=1)
    assert watched.attempts == [1200, 3000]  # 30 minutes after the last one started, not at once; then every 30
