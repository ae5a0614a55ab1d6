"""The rollout drills' faults are real: a spoiled bundle ranks differently, the fault configs slow or fail a real server."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from recflow.data.dataset import Dataset
from recflow.features.online import UserFeatureReader
from recflow.features.store import get_store
from recflow.features.training_set import on_demand_transforms
from recflow.monitoring.live import read_score_reference
from recflow.monitoring.scores import bucket_counts
from recflow.recommender.online import OnlineRecommender, Query, load_bundle
from recflow.rollout.analysis import AnalysisConfig, ScoreReferences, VariantMetrics, analyse
from recflow.rollout.faults import bad_model_bundle, serving_fault
from serving.process import ServerProcess

V1 = "/v1/models/recommender:predict"


def test_a_bad_model_bundle_loads_and_ranks_by_noise(workspace, tmp_path):
    bad = bad_model_bundle(workspace.bundle, tmp_path / "bad")
    store = get_store(workspace.feature_repo)
    good_bundle, bad_bundle = (load_bundle(b, lambda service: on_demand_transforms(store, service)) for b in (workspace.bundle, bad))
    assert bad_bundle.card["version"] == good_bundle.card["version"] + "-bad-model"
    users = UserFeatureReader(store, good_bundle.feature_service).read(workspace.known_users()[:20]).columns
    at = workspace.request_time
    good = good_bundle.stack.recommend(users, 10, {}, at)
    spoiled = bad_bundle.stack.recommend(users, 10, {}, at)
    overlap = np.mean([len({i for i, _ in g} & {i for i, _ in s}) / 10 for g, s in zip(good, spoiled)])
    assert overlap < 0.7, overlap
    scores = [score for answer in spoiled for _, score in answer]
    assert all(0.0 <= score <= 1.0 for score in scores)
    with pytest.raises(FileExistsError):
        bad_model_bundle(workspace.bundle, tmp_path / "bad")


def test_a_bad_model_bundle_leaves_the_scores_it_copied_and_fails_the_score_check(workspace, tmp_path):
    """The copy carries the good bundle's export-time scores; its spoiled ranker no longer gives them.

    Traffic as the platform's simulator sends it: users drawn from all the
    world's users, answered the way the server answers them (seen items
    excluded, scores of the stack's answers only).
    """
    bad = bad_model_bundle(workspace.bundle, tmp_path / "bad")
    references = ScoreReferences(read_score_reference(workspace.bundle), read_score_reference(bad))
    assert references.stable is not None and references.canary == references.stable
    store = get_store(workspace.feature_repo)
    good_bundle, bad_bundle = (load_bundle(b, lambda service: on_demand_transforms(store, service)) for b in (workspace.bundle, bad))
    everyone = Dataset(Path(workspace.card["data"]["dataset"])).read_users()["user_id"].astype(str)
    users = everyone.sample(n=200, random_state=1).tolist()
    reader = UserFeatureReader(store, good_bundle.feature_service)

    def served(bundle, users: list[str]) -> VariantMetrics:
        features = reader.read(users)
        answers, _ = OnlineRecommender(bundle).answer([Query(user, 10) for user in users], features, workspace.request_time)
        answered = [answer for answer in answers if answer.fallback is None]
        counts = bucket_counts(score for answer in answered for _, score in answer.items)
        return VariantMetrics(requests=len(users), errors=0, users=len(answered), fallbacks=0, p99_seconds=0.01,
                              impressions=0, clicks=0, score_counts=counts)  # fmt: skip

    def score_check(stable: VariantMetrics, canary: VariantMetrics):
        decision = analyse(stable, canary, 25, AnalysisConfig(min_requests=1), references)
        return next(c for c in decision.checks if c.name == "score distribution")

    # The good model on one half of the users as the stable; the other half served by the good or the spoiled one.
    stable = served(good_bundle, users[:100])
    check = score_check(stable, served(good_bundle, users[100:]))
    assert check.passed, check.detail
    canary_left = float(re.search(r"canary ([0-9.]+)", check.detail.split("export-time scores: ")[-1])[1])
    assert canary_left < 0.05, check.detail  # live scores near the export-time ones
    check = score_check(stable, served(bad_bundle, users[100:]))
    assert not check.passed, check.detail


@pytest.mark.parametrize("kind", ["latency", "errors"])
def test_a_server_with_an_injected_fault_shows_it(workspace, tmp_path, kind):
    fault = serving_fault(kind).model_copy(update={"error_rate": 1.0})
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump({"inject_fault": fault.model_dump()}))
    arguments = ["--bundle", str(workspace.bundle), "--feature-repo", str(workspace.feature_repo), "--config", str(config)]
    body = {"instances": [{"user_id": workspace.known_users()[0], "k": 5}]}
    with ServerProcess(arguments, tmp_path / "server.log") as server:
        started = time.perf_counter()
        response = httpx.post(server.url + V1, json=body, timeout=30)
        elapsed = time.perf_counter() - started
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
    if kind == "latency":
        assert response.status_code == 200
        assert elapsed >= fault.latency_ms / 1000
    else:
        assert response.status_code == 500
        assert 'recflow_requests_total{endpoint="v1",status="500"} 1.0' in metrics


def test_an_unknown_fault_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="latency, errors, bad-model"):
        serving_fault("slow")
