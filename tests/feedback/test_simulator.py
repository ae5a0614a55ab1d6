"""The traffic simulator against a real model server and the real feedback service.

No proxy here (``tests/platform`` runs the whole platform): the server is
asked directly, so every answer has the empty variant. The server and the
ingestion share a copy of the tiny workspace's feature repo, so the clicks
the simulator sends change the histories the server reads, and the session's
workspace stays as it was.
"""

from __future__ import annotations

import shutil

import pytest

from recflow.feedback.log import FeedbackLog
from recflow.feedback.simulator import SimulationConfig, Simulator, ground_truth_for
from serving.process import ServerProcess


@pytest.fixture
def feature_repo(workspace, tmp_path):
    return shutil.copytree(workspace.feature_repo, tmp_path / "feature_repo")


def test_simulated_users_are_served_click_and_every_event_is_logged_once(
    workspace, feature_repo, tmp_path, start_feedback_service
):
    log_path = tmp_path / "feedback.jsonl"
    feedback = start_feedback_service(feature_repo, log_path)
    with ServerProcess(["--bundle", str(workspace.bundle), "--feature-repo", str(feature_repo)], tmp_path / "server.log") as server:
        config = SimulationConfig(rps=40, duration_seconds=3, k=5, seed=1)
        report = Simulator(config, ground_truth_for(workspace.card), server.url, feedback.url).run()
    assert report.requests == report.ok == 120
    assert report.errors == {}
    counts = report.by_variant[""]
    assert counts["requests"] == 120 and counts["impressions"] > 100
    # Tiny world's users click about one impression in ten.
    assert 0 < counts["clicks"] < counts["impressions"] / 2
    assert report.events_sent == counts["impressions"] and report.events_unsent == 0 and report.events_duplicate == 0
    # Read beside the running service: reading takes no lock.
    events = [event for _, event in FeedbackLog(log_path).read()]
    assert len(events) == len({event.event_id for event in events}) == counts["impressions"]
    assert sum(event.clicked for event in events) == counts["clicks"]


def test_the_oracle_needs_a_named_world():
    with pytest.raises(ValueError, match="named synthetic world"):
        ground_truth_for({"data": {"source": "movielens", "scale": None}})
