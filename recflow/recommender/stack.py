"""The multi-stage recommender: retrieval (ANN) -> ranking -> re-ranking.

One class, used by offline evaluation now and by the model server later, so
the top-k a user is served is the top-k the evaluation scored. It reads only
what a bundle holds (the two-tower model, the item index, the ranker, the
serve-time item snapshot, the stack configuration) plus the user's features,
which the caller reads from the feature service the bundle names.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from recflow.reranking.rerank import RerankConfig, rerank_batch

STACK_FILE = "stack.json"
CATEGORY_COLUMN = "item_category"


class StackConfig(BaseModel):
    """How the stages are combined; stored in the bundle as ``stack.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Candidates retrieval hands to the ranker per user.
    candidates: int = Field(200, ge=1)
    # False: the retrieval order goes straight to re-ranking (retrieval-only stack).
    use_ranker: bool = True
    # Mild diversity by default. Demo world, time split (NDCG@10 of the stack /
    # catalogue coverage): lambda 1.0 (no MMR) 0.111 / 4.9%, 0.9 0.104 / 3.0%,
    # 0.7 0.103 / 2.1%; popularity 0.064, oracle 0.113.
    rerank: RerankConfig = RerankConfig(mmr_lambda=0.9)


class RecommenderStack:
    def __init__(self, retrieval, index, ranker, items: pd.DataFrame, config: StackConfig, transforms=()):
        """``transforms``: functions adding derived columns (on-demand features) to the ranking frame."""
        self.retrieval = retrieval
        self.index = index
        self.ranker = ranker if config.use_ranker else None
        self.items = items.set_index("item_id", drop=False)
        self.config = config
        self.transforms = list(transforms)

    def recommend(
        self,
        users: pd.DataFrame,
        k: int,
        exclude: Mapping[str, Collection[str]],
        at: pd.Timestamp,
        stages: dict[str, dict[str, list[str]]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-k ``(item_id, score)`` for every row of ``users`` (user_id + user features).

        ``at`` is the request instant (cross features measure ages from it).
        When ``stages`` is given, each stage's top-k per user is recorded in it
        (for the stage report).
        """
        user_ids = users["user_id"].astype(str).tolist()
        vectors = self.retrieval.user_vectors(users)
        seen = [exclude.get(user, ()) for user in user_ids]
        candidate_ids, candidate_scores = self.index.search(vectors, self.config.candidates, seen)
        rows = pd.DataFrame(
            {
                "user_row": np.repeat(np.arange(len(user_ids)), candidate_ids.shape[1]),
                "item_id": candidate_ids.ravel(),
                "retrieval_score": candidate_scores.ravel().astype(np.float64),
            }
        )
        rows = rows[rows["item_id"].notna()].reset_index(drop=True)
        rows["user_id"] = np.asarray(user_ids, dtype=object)[rows["user_row"].to_numpy()]
        if self.ranker is not None:
            frame = pd.concat(
                [
                    users.iloc[rows["user_row"].to_numpy()].reset_index(drop=True),
                    self.items.loc[rows["item_id"].to_numpy()].reset_index(drop=True),
                    rows[["retrieval_score"]],
                ],
                axis=1,
            )
            frame["event_timestamp"] = at
            for transform in self.transforms:
                frame = pd.concat([frame, transform(frame)], axis=1)
            rows["score"] = self.ranker.score(frame)
        else:
            rows["score"] = rows["retrieval_score"]
        rows["category"] = self.items[CATEGORY_COLUMN].reindex(rows["item_id"].to_numpy()).to_numpy()
        if stages is not None:
            stages["retrieval"] = _top(rows, "retrieval_score", k)
            stages["ranking"] = _top(rows, "score", k)
        reranked = rerank_batch(rows[["user_id", "item_id", "score", "category"]], k, seen=exclude, config=self.config.rerank)
        by_user = {user: list(zip(group["item_id"], group["score"])) for user, group in reranked.groupby("user_id", sort=False)}
        result = [by_user.get(user, []) for user in user_ids]
        if stages is not None:
            stages["re-ranking"] = {user: [item for item, _ in items] for user, items in zip(user_ids, result)}
        return result


def _top(rows: pd.DataFrame, column: str, k: int) -> dict[str, list[str]]:
    ordered = rows.sort_values(["user_row", column], ascending=[True, False], kind="stable")
    return {user: group["item_id"].head(k).tolist() for user, group in ordered.groupby("user_id", sort=False)}


def save_config(config: StackConfig, bundle: Path) -> None:
    (Path(bundle) / STACK_FILE).write_text(config.model_dump_json(indent=2) + "\n")


def load_config(bundle: Path) -> StackConfig:
    return StackConfig.model_validate(json.loads((Path(bundle) / STACK_FILE).read_text()))


class StackRecommender:
    """The evaluation protocol's view of a stack: ``recommend(user_ids, k, exclude)``."""

    def __init__(self, stack: RecommenderStack, users: pd.DataFrame, at: pd.Timestamp, name: str = "model"):
        self.name = name
        self.stack = stack
        self.users = users.set_index("user_id", drop=False)
        self.at = at
        self.stages: dict[str, dict[str, list[str]]] = {}

    def recommend(self, user_ids: Sequence[str], k: int, exclude: Mapping[str, Collection[str]]) -> list[list[str]]:
        users = self.users.loc[list(user_ids)].reset_index(drop=True)
        lists = self.stack.recommend(users, k, exclude, self.at, stages=self.stages)
        return [[item for item, _ in items] for items in lists]


def build_stack(retrieval_dir: Path, ranker_dir: Path | None, items: pd.DataFrame, config: StackConfig, transforms=()):
    """A stack from trained models and an item snapshot (the index is built from the snapshot)."""
    from recflow.ranking.model import Ranker
    from recflow.retrieval.index import ItemIndex
    from recflow.training.inference import TrainedModel

    retrieval = TrainedModel.load(retrieval_dir)
    vectors, bias = retrieval.item_vectors(items)
    index = ItemIndex.build(items["item_id"].astype(str).tolist(), vectors, bias)
    ranker = Ranker.load(ranker_dir) if config.use_ranker and ranker_dir is not None else None
    return RecommenderStack(retrieval, index, ranker, items, config, transforms)
