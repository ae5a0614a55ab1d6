"""Ranking metrics at k, vectorised over all evaluated users at once.

Conventions (those of the Microsoft Recommenders benchmark table, so numbers
on MovieLens are comparable with it):

* ``recommended`` is an integer array ``[n_users, k]`` of item indices, best
  first, padded with ``-1`` where a recommender returned fewer than k items.
  A row must not repeat an item (a repeated hit would be counted twice).
* ``relevant`` holds each user's relevant item indices, either as a
  :class:`Relevance` (CSR) or as a list of arrays (one per row of
  ``recommended``). Relevance is binary. Every user must have at least one
  relevant item: a user with none cannot be scored (recall, NDCG and MAP
  would divide by zero), so the caller decides whom to evaluate.
* precision@k divides by k even when fewer than k items were recommended.
* NDCG@k uses the log2 discount ``1 / log2(position + 1)`` and the ideal DCG
  of ``min(|relevant|, k)`` hits at the top.
* ``map`` is the mean over users of the average precision
  ``sum over hit positions i <= k of precision@i`` divided by ``|relevant|``
  (not by ``min(|relevant|, k)``): the Recommenders table reports this
  un-truncated denominator, so a user with more than k relevant items can
  never reach an AP of 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np


@dataclass(frozen=True)
class Relevance:
    """Relevant item indices per user in CSR form: user ``u`` owns
    ``indices[indptr[u]:indptr[u + 1]]``, sorted and without duplicates."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int] | np.ndarray]) -> Relevance:
        counts = np.fromiter((len(items) for items in lists), dtype=np.int64, count=len(lists))
        if len(lists) and counts.sum():
            indices = np.concatenate([np.asarray(items, dtype=np.int64).ravel() for items in lists])
        else:
            indices = np.empty(0, dtype=np.int64)
        return cls.from_csr(np.concatenate([[0], np.cumsum(counts)]), indices)

    @classmethod
    def from_csr(cls, indptr: np.ndarray, indices: np.ndarray) -> Relevance:
        """Build from raw CSR arrays, sorting and de-duplicating within each user."""
        indptr = np.asarray(indptr, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(indices):
            raise ValueError("indptr must start at 0 and end at len(indices)")
        counts = np.diff(indptr)
        if (counts < 0).any():
            raise ValueError("indptr must be non-decreasing")
        if (indices < 0).any():
            raise ValueError("relevant item indices must be >= 0")
        rows = np.repeat(np.arange(len(counts)), counts)
        order = np.lexsort((indices, rows))
        rows, indices = rows[order], indices[order]
        keep = np.ones(len(indices), dtype=bool)
        keep[1:] = (rows[1:] != rows[:-1]) | (indices[1:] != indices[:-1])
        new_counts = np.bincount(rows[keep], minlength=len(counts))
        return cls(np.concatenate([[0], np.cumsum(new_counts)]), indices[keep])

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)


RelevantInput = Union[Relevance, Sequence[Sequence[int] | np.ndarray]]


def _as_relevance(relevant: RelevantInput) -> Relevance:
    return relevant if isinstance(relevant, Relevance) else Relevance.from_lists(relevant)


def _as_recommended(recommended: np.ndarray, k: int) -> np.ndarray:
    """The first k columns as int64, right-padded with -1 up to k columns."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise ValueError(f"recommended must be 2-D [n_users, k], got shape {rec.shape}")
    if rec.size and not np.issubdtype(rec.dtype, np.integer):
        raise ValueError(f"recommended must hold integer item indices, got {rec.dtype}")
    rec = rec.astype(np.int64, copy=False)[:, :k]
    if rec.shape[1] < k:
        rec = np.pad(rec, ((0, 0), (0, k - rec.shape[1])), constant_values=-1)
    if (rec < -1).any():
        raise ValueError("recommended item indices must be >= 0, or -1 for padding")
    ordered = np.sort(rec, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        raise ValueError("a row of recommended repeats an item")
    return rec


def _hits(recommended: np.ndarray, relevant: RelevantInput, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(hits [n_users, k] bool, number of relevant items per user [n_users])."""
    rec = _as_recommended(recommended, k)
    rel = _as_relevance(relevant)
    if rec.shape[0] != rel.n_users:
        raise ValueError(f"recommended has {rec.shape[0]} users but relevant has {rel.n_users}")
    n_rel = rel.counts
    if (n_rel == 0).any():
        raise ValueError(f"{int((n_rel == 0).sum())} user(s) have no relevant item; drop them before scoring")
    # One sorted key per (user, item) pair turns membership into a binary search.
    stride = int(max(rec.max(initial=0), rel.indices.max(initial=0))) + 1
    rel_keys = np.repeat(np.arange(rel.n_users, dtype=np.int64), n_rel) * stride + rel.indices
    rec_keys = np.arange(rec.shape[0], dtype=np.int64)[:, None] * stride + rec
    pos = np.minimum(np.searchsorted(rel_keys, rec_keys), max(len(rel_keys) - 1, 0))
    hits = (rec >= 0) & (rel_keys[pos] == rec_keys) if len(rel_keys) else np.zeros(rec.shape, dtype=bool)
    return hits, n_rel


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def _ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    discounts = _discounts(k)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(n_rel, k)]
    return (hits[:, :k] @ discounts) / ideal


def _per_user(hits: np.ndarray, n_rel: np.ndarray, k: int) -> dict[str, np.ndarray]:
    hits_f = hits.astype(np.float64)
    n_hits = hits_f.sum(axis=1)
    precision_at_i = np.cumsum(hits_f, axis=1) / np.arange(1, k + 1)
    return {
        f"precision@{k}": n_hits / k,
        f"recall@{k}": n_hits / n_rel,
        f"ndcg@{k}": _ndcg(hits_f, n_rel, k),
        "map": (precision_at_i * hits_f).sum(axis=1) / n_rel,
        f"hit_rate@{k}": (n_hits > 0).astype(np.float64),
    }


def per_user_metrics(recommended: np.ndarray, relevant: RelevantInput, k: int) -> dict[str, np.ndarray]:
    """Every per-user metric, keyed like :func:`ranking_metrics` (``map`` holds each user's AP)."""
    hits, n_rel = _hits(recommended, relevant, k)
    return _per_user(hits, n_rel, k)


def precision_at_k(recommended: np.ndarray, relevant: RelevantInput, k: int) -> np.ndarray:
    """Per-user share of the k slots that hold a relevant item."""
    return per_user_metrics(recommended, relevant, k)[f"precision@{k}"]


def recall_at_k(recommended: np.ndarray, relevant: RelevantInput, k: int) -> np.ndarray:
    """Per-user share of the relevant items found in the top k."""
    return per_user_metrics(recommended, relevant, k)[f"recall@{k}"]


def ndcg_at_k(recommended: np.ndarray, relevant: RelevantInput, k: int) -> np.ndarray:
    """Per-user binary NDCG@k (log2 discount, ideal over min(|relevant|, k) hits)."""
    return per_user_metrics(recommended, relevant, k)[f"ndcg@{k}"]


def average_precision(recommended: np.ndarray, relevant: RelevantInput, k: int) -> np.ndarray:
    """Per-user AP over the top k, divided by |relevant| (see the module docstring); its mean is ``map``."""
    return per_user_metrics(recommended, relevant, k)["map"]


def hit_rate_at_k(recommended: np.ndarray, relevant: RelevantInput, k: int) -> np.ndarray:
    """Per-user 1.0 if the top k holds at least one relevant item, else 0.0."""
    return per_user_metrics(recommended, relevant, k)[f"hit_rate@{k}"]


def catalog_coverage(recommended: np.ndarray, k: int, catalog_size: int) -> float:
    """Distinct items recommended in anyone's top k, as a share of the catalog."""
    if catalog_size < 1:
        raise ValueError(f"catalog_size must be >= 1, got {catalog_size}")
    rec = _as_recommended(recommended, k)
    return len(np.unique(rec[rec >= 0])) / catalog_size


def ranking_metrics(
    recommended: np.ndarray, relevant: RelevantInput, k: int, catalog_size: int
) -> dict[str, float]:
    """Means over users of every metric, plus coverage and the number of users scored."""
    hits, n_rel = _hits(recommended, relevant, k)
    if len(n_rel) == 0:
        raise ValueError("no users to score")
    means = {name: float(values.mean()) for name, values in _per_user(hits, n_rel, k).items()}
    means[f"coverage@{k}"] = catalog_coverage(recommended, k, catalog_size)
    means["users"] = float(len(n_rel))
    return means


def ndcg_curve(recommended: np.ndarray, relevant: RelevantInput, ks: Sequence[int]) -> np.ndarray:
    """Mean NDCG@k for each k in ``ks`` (same order), computed from one hit matrix."""
    ks = [int(k) for k in ks]
    if not ks:
        return np.empty(0)
    if min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got {ks}")
    hits, n_rel = _hits(recommended, relevant, max(ks))
    hits_f = hits.astype(np.float64)
    return np.array([_ndcg(hits_f, n_rel, k).mean() for k in ks])
