"""A failing ANN index or ranker degrades the answer, never fails it.

These break one collaborator of a loaded bundle's stack in-process (an index
or a ranker whose calls raise, standing in for a corrupt file or a bug) and
check what :class:`OnlineRecommender` answers instead; the HTTP-level
failures (the online store) are in ``test_online_store.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from recflow.features import store
from recflow.features.online import UserFeatureReader
from recflow.features.training_set import on_demand_transforms
from recflow.recommender.online import OnlineRecommender, Query, load_bundle
from recflow.recommender.stack import RecommenderStack


class Broken:
    """Stands in for a collaborator whose every call raises."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        attribute = getattr(self.real, name)
        if not callable(attribute):
            return attribute

        def fail(*args, **kwargs):
            raise RuntimeError(f"{name} is broken")

        return fail


@pytest.fixture
def setup(workspace):
    fs = store.get_store(workspace.feature_repo)
    bundle = load_bundle(workspace.bundle, lambda service: on_demand_transforms(fs, service))
    users = workspace.known_users()[:6]
    features = UserFeatureReader(fs, bundle.feature_service).read(users)
    queries = [Query(user, 10) for user in users]
    return bundle, features, queries, workspace.request_time


def _items(answers):
    return [[item for item, _ in answer.items] for answer in answers]


def test_ann_failure_falls_back_to_exact_search(setup):
    bundle, features, queries, at = setup
    normal, _ = OnlineRecommender(bundle).answer(queries, features, at)
    bundle.stack.index = Broken(bundle.stack.index)
    degraded, trace = OnlineRecommender(bundle).answer(queries, features, at)
    assert {answer.fallback for answer in degraded} == {"ann_failure"}
    assert trace.fallbacks == {"ann_failure": len(queries)}
    # The tiny bundle's index is exact: exact search must find the same items, scored the same.
    assert _items(degraded) == _items(normal)
    np.testing.assert_allclose(
        [s for a in degraded for _, s in a.items], [s for a in normal for _, s in a.items], rtol=1e-5, atol=1e-6
    )


def test_ranker_failure_serves_the_retrieval_order(setup):
    bundle, features, queries, at = setup
    stack = bundle.stack
    retrieval_only = RecommenderStack(
        stack.retrieval, stack.index, None, stack.items, stack.config.model_copy(update={"use_ranker": False})
    )
    seen = dict(zip(features.columns["user_id"], map(set, features.columns["user_recent_item_ids"])))
    expected = retrieval_only.recommend(features.columns, 10, seen, at)
    stack.ranker = Broken(stack.ranker)
    degraded, trace = OnlineRecommender(bundle).answer(queries, features, at)
    assert {answer.fallback for answer in degraded} == {"ranker_failure"}
    assert trace.fallbacks == {"ranker_failure": len(queries)}
    assert [answer.items for answer in degraded] == expected


def test_offline_use_of_the_stack_still_raises(setup):
    """Evaluation must never score a silently degraded stack."""
    bundle, features, _, at = setup
    bundle.stack.ranker = Broken(bundle.stack.ranker)
    with pytest.raises(RuntimeError, match="broken"):
        bundle.stack.recommend(features.columns, 10, {}, at)
