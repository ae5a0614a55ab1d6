"""Retrieval recall: how many held-out positives the ANN candidates contain.

The retrieval stage hands a few hundred candidates to the ranker, so what
matters is recall at that depth (recall@100, recall@200), not NDCG@10. It is
measured with the offline evaluation's own protocol (:func:`evaluate_recommender`):
the same users, relevant sets (test positives minus items seen in train) and
exclusions (items seen in train are never candidates) as the ranking metrics,
and the same metric code.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recflow.evaluation.evaluate import evaluate_recommender
from recflow.evaluation.protocols import Split
from recflow.retrieval.index import DEFAULT_EXACT_THRESHOLD, ItemIndex

DEFAULT_DEPTHS = (100, 200)


class IndexRecommender:
    """A :class:`~recflow.evaluation.recommenders.Recommender` over an :class:`ItemIndex`.

    ``user_vectors`` maps a user id to its vector (the user tower's output as
    of the instant the candidates are for).
    """

    def __init__(self, index: ItemIndex, user_ids: Sequence[str], user_vectors: np.ndarray, name: str = "retrieval"):
        if len(user_ids) != len(user_vectors):
            raise ValueError(f"{len(user_ids)} user ids but {len(user_vectors)} user vectors")
        self.name = name
        self.index = index
        self.user_row = {str(user): row for row, user in enumerate(user_ids)}
        self.user_vectors = np.asarray(user_vectors, dtype=np.float32)

    def recommend(self, user_ids: Sequence[str], k: int, exclude: Mapping[str, Collection[str]]) -> list[list[str]]:
        rows = [self.user_row[str(user)] for user in user_ids]
        found, _ = self.index.search(self.user_vectors[rows], k, [exclude.get(user, ()) for user in user_ids])
        return [[item for item in row if item is not None] for row in found]


def retrieval_recall(
    recommender: IndexRecommender, split: Split, catalog: Sequence[str], depths: Sequence[int] = DEFAULT_DEPTHS
) -> dict[str, float]:
    """``{"recall@100": ..., "recall@200": ..., "users": ...}``: mean recall of the candidates.

    Each depth is one :func:`evaluate_recommender` run at k = depth, so the
    figures follow the ranking evaluation's conventions exactly.
    """
    result: dict[str, float] = {}
    for depth in sorted(set(depths)):
        metrics = evaluate_recommender(recommender, split, depth, catalog=catalog).metrics
        result[f"recall@{depth}"] = metrics[f"recall@{depth}"]
        result[f"hit_rate@{depth}"] = metrics[f"hit_rate@{depth}"]
        result["users"] = metrics["users"]
    return result


def retrieval_recall_for_model_dir(
    model_dir: str | Path,
    dataset_dir: str | Path,
    split_dir: str | Path,
    workspace: str | Path,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
) -> dict[str, Any]:
    """Recall@depth of an exported model's ANN candidates on a pipeline run's split.

    Reads the user and item features the way the pipeline's evaluate step does
    (the model's feature service, as of the split's cutoff, over the catalogue
    of that instant), indexes the item vectors and biases, and searches with
    the test users' vectors. Also reports the index kind and its build and
    search times.
    """
    import time

    from recflow.features import store
    from recflow.features.training_set import entity_features_as_of
    from recflow.pipeline import steps
    from recflow.training.inference import TrainedModel

    held_out = steps.load_split(split_dir)
    service = json.loads((Path(model_dir) / steps.MODEL_INFO).read_text())["feature_service"]
    catalog = [str(item) for item in steps.catalog_at(dataset_dir, held_out.cutoff)]
    feature_store = store.get_store(steps.feature_repo(workspace))
    user_ids = sorted(held_out.test["user_id"].unique())
    users = entity_features_as_of(feature_store, service, "user", user_ids, held_out.cutoff)
    items = entity_features_as_of(feature_store, service, "item", catalog, held_out.cutoff)
    model = TrainedModel.load(model_dir)
    vectors, bias = model.item_vectors(items)
    started = time.perf_counter()
    index = ItemIndex.build(items["item_id"].astype(str).tolist(), vectors, bias, exact_threshold=exact_threshold)
    built = time.perf_counter() - started
    recommender = IndexRecommender(index, users["user_id"].astype(str).tolist(), model.user_vectors(users))
    started = time.perf_counter()
    recall = retrieval_recall(recommender, held_out, catalog, depths)
    return {
        **recall,
        "index": index.kind,
        "items": len(index),
        "build_seconds": built,
        "evaluate_seconds": time.perf_counter() - started,
    }
