"""The multi-stage recommender: retrieval (ANN) -> ranking -> re-ranking.

One class, used by offline evaluation now and by the model server later, so
the top-k a user is served is the top-k the evaluation scored. It reads only
what a bundle holds (the two-tower model, the item index, the ranker, the
serve-time item snapshot, the stack configuration) plus the user's features,
which the caller reads from the feature service the bundle names.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from recflow.features.columns import Columns
from recflow.reranking.rerank import RerankConfig, code_categories, rerank_codes
from recflow.retrieval.index import exclude_positions, top_positions

log = logging.getLogger(__name__)

STACK_FILE = "stack.json"
CATEGORY_COLUMN = "item_category"
# Columns of the ranking frame that belong to a (user, candidate) row, not to either side.
RETRIEVAL_SCORE = "retrieval_score"
TIMESTAMP = "event_timestamp"
# The entities of the two sides the ranking frame joins (the feature repository's names).
USER_ENTITY, ITEM_ENTITY = "user", "item"
# How much worse (relative) fewer candidates may score and still be chosen: see fewest_candidates.
DEPTH_TOLERANCE = 0.01


class StackConfig(BaseModel):
    """How the stages are combined; stored in the bundle as ``stack.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Candidates retrieval hands to the ranker per user. Ranking and
    # re-ranking cost grows with them (an 8-user call with its feature read:
    # 10.5 ms with 200, 7.4 ms with 100). What fewer cost depends on
    # retrieval's recall: on the demo world NDCG@10 was 0.1045 with 100,
    # 150 and 200 alike, on the tiny world with a one-epoch retrieval model
    # 0.134 with 100 against 0.312 with 200. So the pipeline's evaluation
    # compares depths and keeps the fewest that score within DEPTH_TOLERANCE
    # of the most (:func:`fewest_candidates`).
    candidates: int = Field(200, ge=1)
    # False: the retrieval order goes straight to re-ranking (retrieval-only stack).
    use_ranker: bool = True
    # Mild diversity by default. Demo world, time split (NDCG@10 of the stack /
    # catalogue coverage): lambda 1.0 (no MMR) 0.111 / 4.9%, 0.9 0.104 / 3.0%,
    # 0.7 0.103 / 2.1%; popularity 0.064, oracle 0.113.
    rerank: RerankConfig = RerankConfig(mmr_lambda=0.9)


@dataclass
class StageTrace:
    """One call's seconds per stage and the fallbacks it took.

    With ``degrade`` (serving), a failing ANN index falls back to exact
    search over the item vectors and a failing ranker to the retrieval
    order, each named in ``fallbacks``; without it (evaluation) they raise:
    a degraded stack must never be scored as if it were the model.
    """

    degrade: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)


class RecommenderStack:
    """The three stages over a fixed item snapshot; :meth:`recommend` serves a batch of users.

    Offline evaluation calls it with thousands of users at once, the model
    server with micro-batches of 1 to 16, where a call's fixed cost is most of
    its cost. So everything that depends on the snapshot alone is prepared
    here, once: where each index position sits in the snapshot, its category,
    and the ranker's encoding of every snapshot item. A request then encodes
    its few users once and gathers the rest for its (user, candidate) rows;
    the scores are those of the ranker on the joined frame (see
    :meth:`recflow.ranking.model.Ranker.score_candidates`), so evaluation and
    serving still share every line. ``benchmarks/stack_latency.py`` times it.
    """

    def __init__(
        self, retrieval, index, ranker, items: pd.DataFrame, config: StackConfig, transforms=(), exact_vectors=None
    ):
        """``transforms``: the on-demand feature transforms of the ranker's feature service
        (:class:`~recflow.features.training_set.OnDemandTransform`). One that
        reads the item's features alone runs here, once over the snapshot;
        one that reads the user's alone runs per request on its few users;
        only one that combines both runs on the (user, candidate) rows.

        ``exact_vectors``: the index's item vectors and biases, in its item
        order (the bundle's ``item_embeddings.npy``, ``item_bias.npy``), for
        exact search when the index fails.
        """
        self.retrieval = retrieval
        self.exact_vectors = exact_vectors
        self._exact_position = {item: position for position, item in enumerate(index.item_ids)}
        self.index = index
        self.ranker = ranker if config.use_ranker else None
        self.items = items.set_index("item_id", drop=False)
        self.config = config
        self._user_transforms = [t for t in transforms if t.side == USER_ENTITY]
        self._joint_transforms = [t for t in transforms if t.side not in (USER_ENTITY, ITEM_ENTITY)]
        if not self.items.index.is_unique:
            raise ValueError("the item snapshot lists an item_id more than once")
        self._item_ids = np.array(index.item_ids, dtype=str)  # re-ranking reads ids as a numpy string array
        # Snapshot row of each index position (-1: not in the snapshot), and its category (NaN if not).
        self._snapshot_rows = self.items.index.get_indexer(index.item_ids)
        categories = np.append(self.items[CATEGORY_COLUMN].to_numpy(), np.nan)[self._snapshot_rows]
        # What re-ranking compares, as integers: each position's place in item-id order and its category code.
        self._item_order = np.unique(self._item_ids, return_inverse=True)[1]
        self._category_codes, self._category_names = code_categories(categories, len(categories))
        if self.ranker is not None:
            items = items.reset_index(drop=True)
            items = _merged(items, _transform_outputs(items, [t for t in transforms if t.side == ITEM_ENTITY]))
            self._ranker_items = self.ranker.encode_columns(items)
            self._item_columns = {name: column for name, column in items.items()}

    def with_candidates(self, candidates: int) -> RecommenderStack:
        """This stack retrieving ``candidates`` per user; the models and the encoded snapshot are shared."""
        stack = copy.copy(self)
        stack.config = StackConfig.model_validate({**self.config.model_dump(), "candidates": candidates})
        return stack

    def recommend(
        self,
        users: pd.DataFrame | Columns,
        k: int,
        exclude: Mapping[str, Collection[str]],
        at: pd.Timestamp,
        stages: dict[str, dict[str, list[str]]] | None = None,
        trace: StageTrace | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-k ``(item_id, score)`` for every row of ``users`` (user_id + user features; :class:`Columns` online).

        ``at`` is the request instant (cross features measure ages from it).
        When ``stages`` is given, each stage's top-k per user is recorded in it
        (for the stage report); ``trace`` records timings and, when it says
        so, turns stage failures into fallbacks.
        """
        trace = trace if trace is not None else StageTrace()
        started = time.perf_counter()
        user_ids = [str(user) for user in users["user_id"]]  # a tenth of astype(str) on a request's few users
        vectors = self.retrieval.user_vectors(users)
        seen = [exclude.get(user, ()) for user in user_ids]
        try:
            positions, retrieval_scores = self.index.search_positions(vectors, self.config.candidates, seen)
        except Exception as error:
            if not trace.degrade or self.exact_vectors is None:
                raise
            log.warning("ANN search failed, searching exactly: %s: %s", type(error).__name__, error)
            trace.fallbacks.append("ann_failure")
            positions, retrieval_scores = self._exact_search(vectors, seen)
        ranking_started = time.perf_counter()
        trace.seconds["retrieval"] = ranking_started - started
        # One (user, candidate) row per found candidate, user by user, in retrieval order.
        user_rows, ranks = np.nonzero(positions >= 0)
        positions = positions[user_rows, ranks]
        retrieval_scores = retrieval_scores[user_rows, ranks].astype(np.float64)
        item_ids = self._item_ids[positions]
        scores = retrieval_scores
        if self.ranker is not None:
            try:
                scores = self._rank(users, user_rows, positions, retrieval_scores, at)
            except Exception as error:
                if not trace.degrade:
                    raise
                log.warning("ranker failed, serving the retrieval order: %s: %s", type(error).__name__, error)
                trace.fallbacks.append("ranker_failure")
        reranking_started = time.perf_counter()
        trace.seconds["ranking"] = reranking_started - ranking_started
        if stages is not None:
            rows = pd.DataFrame(
                {
                    "user_row": user_rows,
                    "retrieval_score": retrieval_scores,
                    "user_id": np.array(user_ids, dtype=str)[user_rows],
                    "item_id": item_ids,
                    "score": scores,
                }
            )
            stages["retrieval"] = _top(rows, "retrieval_score", k)
            stages["ranking"] = _top(rows, "score", k)
        # One re-ranking per user id: a user given twice gets one list from both rows' candidates.
        # No seen items to pass on: retrieval (ANN or exact) already left every excluded item out.
        codes: dict[str, int] = {}
        user_codes = np.array([codes.setdefault(user, len(codes)) for user in user_ids], dtype=np.int64)
        picked_users, picked_rows, _ = rerank_codes(
            user_codes[user_rows], len(codes), item_ids, self._item_order[positions], scores,
            self._category_codes[positions], self._category_names, k, self.config.rerank,
        )  # fmt: skip
        lists: list[list[tuple[str, float]]] = [[] for _ in codes]
        for user, item, score in zip(picked_users.tolist(), item_ids[picked_rows].tolist(), scores[picked_rows].tolist()):
            lists[user].append((item, score))
        result = [lists[code] for code in user_codes]
        trace.seconds["reranking"] = time.perf_counter() - reranking_started
        if stages is not None:
            stages["re-ranking"] = {user: [item for item, _ in items] for user, items in zip(user_ids, result)}
        return result

    def _exact_search(self, vectors: np.ndarray, seen: list[Collection[str]]) -> tuple[np.ndarray, np.ndarray]:
        """What ``index.search_positions`` returns, by brute force in numpy (no faiss, no index file)."""
        item_vectors, item_bias = self.exact_vectors
        scores = np.asarray(vectors, dtype=np.float32) @ np.asarray(item_vectors, dtype=np.float32).T
        scores += np.asarray(item_bias, dtype=np.float32)
        excluded = [np.array([self._exact_position[i] for i in items if i in self._exact_position]) for items in seen]
        return top_positions(exclude_positions(scores, excluded), self.config.candidates)

    def _rank(
        self, users: pd.DataFrame, user_rows: np.ndarray, positions: np.ndarray, retrieval_scores: np.ndarray, at
    ) -> np.ndarray:
        """The ranker's score of every (user, candidate) row, from the users and the encoded snapshot.

        The user-side on-demand features are added to the few users; the
        item-side ones are in the encoded snapshot. The user-side outputs go
        to the ranker as frames of their own, not as columns added to the
        users' frame: adding a column to a pandas frame and reading the copy
        back cost more than the transform itself. Only a transform that
        combines user and item columns (or the request time) reads joined
        rows: it gets every user and item column gathered to every row, and
        its output columns are scored as per-row columns. Everything else is
        encoded once per user or per snapshot item (``Ranker.score_candidates``).
        """
        item_rows = self._snapshot_rows[positions]
        if (item_rows < 0).any():
            missing = sorted({self.index.item_ids[p] for p in positions[item_rows < 0]})
            raise KeyError(f"candidates not in the stack's item snapshot: {missing[:5]}")
        # Feast's on-demand transformations read DataFrames; the encoders read the users as given.
        transformed = self._user_transforms or self._joint_transforms
        frame = users.to_pandas() if transformed and isinstance(users, Columns) else users
        outputs = _transform_outputs(frame, self._user_transforms)
        if self._joint_transforms:
            rows = {RETRIEVAL_SCORE: retrieval_scores, TIMESTAMP: at}
            joined = {name: _take(column, user_rows) for name, column in _merged(frame, outputs).items()}
            joined.update((name, _take(column, item_rows)) for name, column in self._item_columns.items())
            # copy=False: the arrays are this request's own; pandas would copy them into blocks.
            frame = pd.DataFrame({**joined, **rows}, copy=False)
            rows = {RETRIEVAL_SCORE: frame[RETRIEVAL_SCORE], TIMESTAMP: frame[TIMESTAMP]}
            for number, transform in enumerate(self._joint_transforms, start=1):
                output = transform(frame)
                rows.update(output.items())
                if number < len(self._joint_transforms):  # a later transform may read an earlier one's columns
                    frame = pd.concat([frame, output], axis=1)
            rows = pd.DataFrame(rows, copy=False)
        else:
            request_time = np.full(len(retrieval_scores), at.to_datetime64())
            rows = Columns({RETRIEVAL_SCORE: retrieval_scores, TIMESTAMP: request_time})
        user_frames = [*reversed(outputs), users]  # a later output wins over an earlier one and over the users' column
        return self.ranker.score_candidates(rows, user_frames, user_rows, self._ranker_items, item_rows)


def _transform_outputs(frame: pd.DataFrame, transforms) -> list[pd.DataFrame]:
    """Each transform's output frame (row-aligned with ``frame``); each sees ``frame`` with the earlier ones' outputs."""
    outputs: list[pd.DataFrame] = []
    for transform in transforms:
        outputs.append(transform(_merged(frame, outputs)))
    return outputs


def _merged(frame: pd.DataFrame, outputs: list[pd.DataFrame]) -> pd.DataFrame:
    """``frame`` with the columns of ``outputs``, a later one replacing a same-named column; ``frame`` itself if none."""
    for output in outputs:
        frame = frame.copy(deep=False)  # the caller's frame keeps its columns; no values are copied
        for name, column in output.items():
            frame[name] = column.array  # by position, dtype kept
    return frame


def _take(column: pd.Series, rows: np.ndarray):
    """``column.iloc[rows]`` as an array (same dtype), without building an indexed Series."""
    if isinstance(column.dtype, np.dtype):
        return column.to_numpy()[rows]
    return column.array.take(rows)


def _top(rows: pd.DataFrame, column: str, k: int) -> dict[str, list[str]]:
    ordered = rows.sort_values(["user_row", column], ascending=[True, False], kind="stable")
    return {user: group["item_id"].head(k).tolist() for user, group in ordered.groupby("user_id", sort=False)}


def fewest_candidates(metric_by_depth: Mapping[int, float], tolerance: float = DEPTH_TOLERANCE) -> int:
    """The fewest candidates per user whose metric is within ``tolerance`` (relative) of the most's.

    Evaluation scores the stack at several retrieval depths: more candidates
    give the ranker more to find and cost every request more. Differences
    within the tolerance are below what a held-out sample of a few thousand
    users resolves, so they do not buy the cost. A NaN metric (no test users)
    keeps the most.
    """
    deepest = max(metric_by_depth)
    good_enough = metric_by_depth[deepest] * (1.0 - tolerance)
    return min(depth for depth, value in metric_by_depth.items() if depth == deepest or value >= good_enough)


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
