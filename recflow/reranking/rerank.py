"""The re-ranking stage: business rules and diversity on top of the ranker's scores.

Given one user's (or many users') scored candidates, :func:`rerank` returns the
final top k:

1. **Filters.** Items the user has seen (when ``exclude_seen``), blocked items,
   items of blocked categories, items younger than ``min_item_age_hours`` and
   candidates with a NaN score are dropped; they are never returned. A
   candidate listed twice for the same user keeps its highest score.
2. **Relevance.** Scores are min-max normalised per user over the remaining
   candidates (all equal -> 1.0), so the MMR trade-off means the same thing
   whatever the ranker's scale (logits, probabilities). Boosts are added to
   this normalised relevance: ``boost_categories[c]`` (0.1 = a tenth of the
   user's score range) and ``freshness_boost * 0.5 ** (age_hours /
   freshness_half_life_hours)`` when candidate ages are given.
3. **MMR.** Greedily pick ``argmax λ·relevance − (1−λ)·redundancy`` where
   redundancy is the maximum (``redundancy="max"``, classic MMR) or the mean
   (``"mean"``) similarity to the items already picked, 0 for the first pick.
   Similarity is 1 for the same category and 0 otherwise (an item without a
   category resembles nothing), or the cosine of the candidates' embeddings
   with ``diversity="embedding"``. Items of a category that already holds
   ``max_per_category`` picks are skipped (a list may then be shorter than k).
   Ties go to the higher boosted relevance, then the higher raw score, then
   the smaller item id: results are deterministic and independent of the
   input order.

With λ=1 the result is the filtered list sorted by score (plus boosts). With
λ=0 and max redundancy the first picks cover every category once, each time
the most relevant item of a new category, after which every item is equally
redundant and relevance decides; ``redundancy="mean"`` keeps rotating through
the categories instead (the least represented category goes next).

The returned score of each item is its input score (the ranker's), not the
MMR objective: the order carries the re-ranking.

:func:`rerank_batch` runs the same greedy selection for many users at once
(numpy over a [users, candidates] matrix, k steps), :func:`rerank` is the
one-user call of the same code and :func:`rerank_codes` the same for
candidates given as integer codes (the recommender stack's), so all give
identical lists.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

USER_ID = "user_id"
ITEM_ID = "item_id"
SCORE = "score"
CATEGORY = "category"
AGE_HOURS = "age_hours"
RANK = "rank"


class RerankConfig(BaseModel):
    """Re-ranking rules; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")

    # 1: pure relevance; 0: pure diversity.
    mmr_lambda: float = Field(default=0.7, ge=0.0, le=1.0)
    # Similarity between two candidates: same category, or embedding cosine.
    diversity: Literal["category", "embedding"] = "category"
    # Redundancy of a candidate: max (classic MMR) or mean similarity to the picks.
    redundancy: Literal["max", "mean"] = "max"
    max_per_category: int | None = Field(default=None, ge=1)
    exclude_seen: bool = True
    blocked_items: set[str] = set()
    blocked_categories: set[str] = set()
    # Added to the min-max normalised relevance of the category's items.
    boost_categories: dict[str, float] = {}
    # Items younger than this are dropped (e.g. not yet moderated); unknown ages pass.
    min_item_age_hours: float | None = Field(default=None, ge=0.0)
    # Added to relevance as freshness_boost * 0.5 ** (age / half life); unknown ages get 0.
    freshness_boost: float = Field(default=0.0, ge=0.0)
    freshness_half_life_hours: float = Field(default=24.0, gt=0.0)


def _column(candidates, name: str, required: bool = True):
    if isinstance(candidates, pd.DataFrame):
        if name in candidates.columns:
            return candidates[name].to_numpy()
    elif name in candidates:
        return np.asarray(candidates[name])
    if name == CATEGORY:  # the Feast name of the candidate's category
        return _column(candidates, "item_category", required)
    if required:
        raise ValueError(f"candidates have no {name!r} column")
    return None


def _strings(values) -> np.ndarray:
    """Ids as a numpy string array (``str()`` of each value); an array of strings is taken as it is."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return values
    return np.asarray(values, dtype=object).astype(str)


def code_categories(categories: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes with -1 for missing, the category names): codes index the sorted names."""
    if categories is None:
        return np.full(n, -1, dtype=np.int64), np.empty(0, dtype=object)
    codes, names = pd.factorize(np.asarray(categories, dtype=object), sort=True)
    return codes.astype(np.int64), np.asarray(names, dtype=object)


def _codes_in_order(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code of each value, the distinct values): codes number the values in order of first appearance.

    ``pd.factorize(values)`` for arrays of strings, through numpy's sort,
    which is several times faster on the few hundred ids of a request.
    """
    names, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first)
    codes = np.empty(len(order), dtype=np.int64)
    codes[order] = np.arange(len(order))
    return codes[inverse], names[order]


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.divide(embeddings, norms, out=np.zeros_like(embeddings), where=norms > 0)


def _relevance(
    scores: np.ndarray, valid: np.ndarray, codes: np.ndarray, names: np.ndarray, ages: np.ndarray | None, config
) -> np.ndarray:
    """[U, C] min-max normalised scores per user row, plus boosts; 0 where invalid (masked later)."""
    low = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
    high = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
    span = high - low
    with np.errstate(invalid="ignore"):
        relevance = np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 1.0)
    if config.boost_categories and len(names):
        boosts = np.array([config.boost_categories.get(str(name), 0.0) for name in names] + [0.0])
        relevance = relevance + boosts[codes]  # code -1 picks the trailing 0
    if config.freshness_boost and ages is not None:
        freshness = np.where(np.isnan(ages), 0.0, 0.5 ** (np.maximum(ages, 0.0) / config.freshness_half_life_hours))
        relevance = relevance + config.freshness_boost * freshness
    return np.where(valid, relevance, 0.0)


def _greedy_mmr(
    relevance: np.ndarray,
    scores: np.ndarray,
    codes: np.ndarray,
    valid: np.ndarray,
    vectors: np.ndarray | None,
    k: int,
    config: RerankConfig,
    num_categories: int,
) -> np.ndarray:
    """[U, k] column indices picked per user row, -1 once a row has nothing left.

    Columns are sorted by item id within each row. Ties of the objective go
    to the higher relevance, then the higher raw score, then the smaller item
    id: that order does not change between steps, so it is ranked once
    (``preference``) and each step takes the most preferred of its tied
    candidates. A request runs k steps over a small matrix, where every numpy
    call costs microseconds whatever its size, so each step does few of them.
    """
    users, width = relevance.shape
    lam = config.mmr_lambda
    picks = np.full((users, k), -1, dtype=np.int64)
    available = valid.copy()
    cap = config.max_per_category if num_categories else None
    mean_redundancy = config.redundancy == "mean"
    redundancy = np.zeros((users, width))  # max, or sum for "mean", of the similarities to the picks
    per_category = np.zeros((users, num_categories + 1), dtype=np.int64)  # last column: no category
    rows = np.arange(users)
    known = codes >= 0
    category_slot = np.where(known, codes, num_categories)
    weighted_relevance = lam * relevance
    preference = _preference(relevance, scores)
    # Category codes as floats with NaN for "no category": NaN equals nothing, not even NaN,
    # so one comparison says "same category" (an item without one resembles nothing).
    categories = np.where(known, codes, np.nan)
    for step in range(min(k, width)):
        allowed = available
        if cap is not None:
            full = np.take_along_axis(per_category, category_slot, axis=1)
            allowed = available & ~(known & (full >= cap))
        current = redundancy / step if mean_redundancy and step else redundancy
        objective = np.where(allowed, weighted_relevance - (1.0 - lam) * current, -np.inf)
        tied = allowed & (objective == objective.max(axis=1, keepdims=True))
        ranked = np.where(tied, preference, width)
        choice = ranked.argmin(axis=1)
        has_choice = ranked[rows, choice] < width
        if not has_choice.any():
            break
        # Every row is updated, chosen or not: a row without a choice (nothing
        # allowed, or a NaN objective) never gets one later, whatever its state.
        picks[:, step] = np.where(has_choice, choice, -1)
        available[rows, choice] = False
        if cap is not None:
            per_category[rows, category_slot[rows, choice]] += 1
        if vectors is not None:
            similarity = np.einsum("ucd,ud->uc", vectors, vectors[rows, choice])
        else:
            similarity = categories == categories[rows, choice][:, None]  # bool: 1.0 / 0.0 below
        if mean_redundancy:
            redundancy += similarity
        elif step == 0:
            # Before the first pick nothing is redundant; afterwards a max starts from the true value.
            redundancy[:] = similarity
        else:
            np.maximum(redundancy, similarity, out=redundancy)
    return picks


def _preference(relevance: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[U, C] rank of each column within its row by (relevance desc, score desc, column asc); 0 = first."""
    users, width = relevance.shape
    columns, rows = np.tile(np.arange(width), users), np.repeat(np.arange(users), width)
    order = np.lexsort((columns, -scores.ravel(), -relevance.ravel(), rows))  # the last key sorts first
    ranks = np.empty(users * width, dtype=np.int64)
    ranks[order] = np.arange(users * width)
    return ranks.reshape(users, width) - np.arange(users)[:, None] * width


def _prepare_config(config: RerankConfig | None, embeddings) -> RerankConfig:
    config = config or RerankConfig()
    if config.diversity == "embedding" and embeddings is None:
        raise ValueError("diversity='embedding' needs candidate embeddings")
    return config


def rerank_batch(
    candidates: pd.DataFrame | Mapping[str, Sequence],
    k: int,
    seen: Mapping[str, Collection[str]] | None = None,
    config: RerankConfig | None = None,
    embeddings: np.ndarray | None = None,
) -> pd.DataFrame:
    """Re-rank many users' candidates at once.

    `candidates` has one row per (user, candidate): ``user_id``, ``item_id``,
    ``score`` and optionally ``category`` (or ``item_category``) and
    ``age_hours``, as a DataFrame or a mapping of equal-length columns;
    `embeddings` is an optional [rows, d] array row-aligned with it. `seen`
    maps a user to the items they already interacted with. Returns
    ``user_id, item_id, score, rank`` (rank 1 = top), users in order of first
    appearance.
    """
    users, items, scores, ranks = _rerank_batch(candidates, k, seen, config, embeddings)
    return pd.DataFrame(
        {
            USER_ID: users if len(users) else np.empty(0, dtype=object),
            ITEM_ID: items,
            SCORE: scores,
            RANK: ranks,
        }
    )


def _rerank_batch(
    candidates, k: int, seen, config: RerankConfig | None, embeddings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, score, rank) of every pick, users in order of first appearance, ranks ascending."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    config = _prepare_config(config, embeddings)
    scores = np.asarray(_column(candidates, SCORE), dtype=np.float64)
    n = len(scores)
    users = _strings(_column(candidates, USER_ID)) if n else np.empty(0, str)
    items = _strings(_column(candidates, ITEM_ID)) if n else np.empty(0, str)
    raw_categories = _column(candidates, CATEGORY, required=False)
    ages = _column(candidates, AGE_HOURS, required=False)
    ages = None if ages is None else np.asarray(ages, dtype=np.float64)

    user_codes, user_names = _codes_in_order(users)
    keep = None
    if config.exclude_seen and seen and n:
        keep = ~_seen_rows(user_codes, user_names, items, seen)
    category_codes, category_names = code_categories(raw_categories, n)
    picked_users, source, ranks = rerank_codes(
        user_codes, len(user_names), items, np.unique(items, return_inverse=True)[1], scores,
        category_codes, category_names, k, config, ages=ages, embeddings=embeddings, keep=keep,
    )  # fmt: skip
    return user_names[picked_users], items[source], scores[source], ranks


def rerank_codes(
    user_codes: np.ndarray,
    num_users: int,
    items: np.ndarray,
    item_order: np.ndarray,
    scores: np.ndarray,
    category_codes: np.ndarray,
    category_names: np.ndarray,
    k: int,
    config: RerankConfig | None = None,
    *,
    ages: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`rerank_batch`'s selection for candidates whose users, items and categories are integer codes.

    Row i is a candidate of user ``user_codes[i]`` (``0 <= code <
    num_users``): item ``items[i]`` (its id, read only by the blocked-items
    rule), whose place in item-id order is ``item_order[i]`` (equal for
    equal ids: ties go to the smaller id), scored ``scores[i]``, of category
    ``category_names[category_codes[i]]`` (-1: none). `keep` drops rows
    before anything else (the seen items). Returns (user code, row, rank)
    of every pick, users ascending, ranks from 1.

    The strings a caller holds cost more to sort and factorise than the
    selection itself on a request's few hundred candidates; the recommender
    stack holds codes for its snapshot already, so it calls this directly,
    and :func:`rerank_batch` codes its strings and calls it too.
    """
    config = _prepare_config(config, embeddings)
    categories = None
    if config.blocked_categories:
        categories = np.append(np.asarray(category_names, dtype=object), None)[category_codes]  # -1 -> None
    filtered = _filters(items, scores, categories, ages, config)
    keep = filtered if keep is None else keep & filtered
    picked_users, picked_rows, ranks = _select(
        user_codes[keep], item_order[keep], scores[keep], category_codes[keep], category_names,
        None if ages is None else ages[keep],
        None if embeddings is None else np.asarray(embeddings, dtype=np.float64)[keep],
        num_users, k, config,
    )  # fmt: skip
    return picked_users, np.flatnonzero(keep)[picked_rows], ranks


def _seen_rows(
    user_codes: np.ndarray, user_names: np.ndarray, items: np.ndarray, seen: Mapping[str, Collection[str]]
) -> np.ndarray:
    """Rows whose (user, item) pair `seen` lists (ids compared as strings).

    Only the users present in the batch are read, and the pairs are compared
    as integer codes: ``seen`` may hold every user of an evaluation.
    """
    position = {name: code for code, name in enumerate(user_names)}
    seen_users: list[int] = []
    seen_items: list[str] = []
    for user, user_items in seen.items():
        code = position.get(str(user))
        if code is not None:
            listed = [str(item) for item in user_items]
            seen_users += [code] * len(listed)
            seen_items += listed
    if not seen_items:
        return np.zeros(len(items), dtype=bool)
    item_names, item_codes = np.unique(np.concatenate([items, np.array(seen_items, dtype=str)]), return_inverse=True)
    row_pairs = user_codes * len(item_names) + item_codes[: len(items)]
    seen_pairs = np.array(seen_users, dtype=np.int64) * len(item_names) + item_codes[len(items) :]
    return np.isin(row_pairs, seen_pairs)


def rerank(
    candidates: pd.DataFrame | Mapping[str, Sequence],
    k: int,
    seen: Collection[str] = (),
    config: RerankConfig | None = None,
    embeddings: np.ndarray | None = None,
) -> list[tuple[str, float]]:
    """One user's final list: ``[(item_id, score), ...]``, best first, at most k.

    `candidates`: a DataFrame or a mapping of equal-length columns ``item_id``,
    ``score`` and optionally ``category`` (or ``item_category``) and
    ``age_hours``; `embeddings` an optional row-aligned [n, d] array.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    config = _prepare_config(config, embeddings)
    items = _strings(_column(candidates, ITEM_ID))
    scores = np.asarray(_column(candidates, SCORE), dtype=np.float64)
    raw_categories = _column(candidates, CATEGORY, required=False)
    ages = _column(candidates, AGE_HOURS, required=False)
    ages = None if ages is None else np.asarray(ages, dtype=np.float64)
    keep = None
    if config.exclude_seen and seen:
        keep = ~np.isin(items, np.asarray(list(seen), dtype=object).astype(str))
    category_codes, category_names = code_categories(raw_categories, len(items))
    _, picked_rows, _ = rerank_codes(
        np.zeros(len(items), dtype=np.int64), 1, items, np.unique(items, return_inverse=True)[1], scores,
        category_codes, category_names, k, config, ages=ages, embeddings=embeddings, keep=keep,
    )  # fmt: skip
    return [(str(items[i]), float(scores[i])) for i in picked_rows]


def _filters(
    items: np.ndarray, scores: np.ndarray, categories, ages: np.ndarray | None, config: RerankConfig
) -> np.ndarray:
    """Rows that survive the business rules (seen items are handled by the callers)."""
    keep = ~np.isnan(scores)
    if config.blocked_items:
        keep &= ~np.isin(items, np.array(sorted(config.blocked_items), dtype=object).astype(str))
    if config.blocked_categories and categories is not None:
        keep &= ~pd.Series(categories, dtype=object).isin(config.blocked_categories).to_numpy()
    if config.min_item_age_hours is not None and ages is not None:
        keep &= ~(ages < config.min_item_age_hours)  # NaN (unknown) passes
    return keep


def _select(
    user_codes: np.ndarray,
    item_codes: np.ndarray,
    scores: np.ndarray,
    codes: np.ndarray,
    names: np.ndarray,
    ages: np.ndarray | None,
    embeddings: np.ndarray | None,
    num_users: int,
    k: int,
    config: RerankConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user code, row index into the given arrays, rank) of every pick, users ascending, rank ascending.

    ``item_codes`` number the items in id order; ``codes`` index the category ``names`` (-1: none).
    """
    n = len(item_codes)
    empty = np.empty(0, dtype=np.int64)
    if n == 0:
        return empty, empty, empty
    # Sort by (user, item id, score descending); the first row of each (user, item) is its best score.
    order = np.lexsort((-scores, item_codes, user_codes))
    first = np.ones(n, dtype=bool)
    first[1:] = (user_codes[order][1:] != user_codes[order][:-1]) | (item_codes[order][1:] != item_codes[order][:-1])
    order = order[first]

    group = user_codes[order]
    counts = np.bincount(group, minlength=num_users)
    width = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    column = np.arange(len(order)) - starts[group]
    source = np.full((num_users, width), -1, dtype=np.int64)
    source[group, column] = order
    valid = source >= 0
    take = np.where(valid, source, 0)

    padded_scores = np.where(valid, scores[take], -np.inf)
    padded_codes = np.where(valid, codes[take], -1)
    padded_ages = None if ages is None else np.where(valid, ages[take], np.nan)
    relevance = _relevance(padded_scores, valid, padded_codes, names, padded_ages, config)
    vectors = None
    if config.diversity == "embedding":
        assert embeddings is not None  # checked by _prepare_config
        vectors = _unit_rows(embeddings)[take] * valid[:, :, None]
    picks = _greedy_mmr(relevance, padded_scores, padded_codes, valid, vectors, k, config, len(names))

    users, ranks = np.nonzero(picks >= 0)
    return users, source[users, picks[users, ranks]], ranks + 1
