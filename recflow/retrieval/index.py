"""Approximate nearest-neighbour index over item vectors: the retrieval stage's candidate source.

The two-tower model scores ``user · item + item_bias``. An inner-product index
knows no bias, so the bias goes in as one more dimension: every item vector
gets its bias appended, every query gets a 1 appended, and the inner product
of the two is exactly ``user · item + item_bias``. The scores the index
returns are therefore the model's logits, not an approximation of them (HNSW
approximates *which* items come back, never their scores: it stores the
vectors uncompressed).

Two kinds of index, chosen by catalogue size:

- ``exact`` (faiss ``IndexFlatIP``) below ``exact_threshold`` items: a
  brute-force matrix product, exact and fast enough for tens of thousands of
  items.
- ``hnsw`` (faiss ``IndexHNSWFlat`` with the inner-product metric) above it:
  a navigable small-world graph, sub-linear in the catalogue, whose recall is
  traded against time by ``ef_search``.

Exclusions (items the user has already consumed) are applied after the
search: the index is asked for ``n`` plus the largest number of excluded
items among the users of a query block, so every user still gets ``n``
candidates whenever the catalogue has them.

faiss is imported lazily: the rest of recflow works without it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal, Union

import numpy as np

INDEX_FILE = "index.faiss"
ITEMS_FILE = "item_ids.json"
META_FILE = "index.json"

# Catalogues up to this many items are searched exactly by default.
DEFAULT_EXACT_THRESHOLD = 50_000
# Users searched per faiss call: bounds the [block, n + excluded] result arrays.
QUERY_BLOCK = 4096

Exclusions = Union[np.ndarray, Sequence[Collection[str]], None]


def set_search_threads(threads: int) -> None:
    """faiss's OpenMP threads for every index of this process (a server sets it once, at load)."""
    _faiss().omp_set_num_threads(threads)


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("recflow.retrieval.index needs faiss: pip install faiss-cpu") from error
    return faiss


def _as_float32(array: np.ndarray, name: str, ndim: int) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


class ItemIndex:
    """Top-n items by ``user · item + item_bias`` for batches of user vectors."""

    def __init__(self, item_ids: list[str], index, kind: Literal["exact", "hnsw"], dim: int, ef_search: int) -> None:
        self.item_ids = list(item_ids)
        self.item_position = {item: position for position, item in enumerate(self.item_ids)}
        if len(self.item_position) != len(self.item_ids):
            raise ValueError("item_ids holds duplicates")
        self.index = index
        self.kind = kind
        self.dim = dim  # width of the model's vectors, without the bias dimension
        self.ef_search = ef_search
        self._ids = np.array(self.item_ids + [None], dtype=object)  # position -1 -> None

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        bias: np.ndarray | None = None,
        exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
    ) -> ItemIndex:
        """Index `vectors` [n_items, dim] (and their `bias` [n_items], zero if omitted).

        An exact index when ``len(item_ids) < exact_threshold``, HNSW otherwise;
        ``hnsw_m`` (graph degree), ``ef_construction`` and ``ef_search`` (the
        candidate-list sizes at build and query time; query time uses at least
        the number of items asked for) shape the HNSW graph and its recall.
        """
        faiss = _faiss()
        item_ids = [str(item) for item in item_ids]
        vectors = _as_float32(vectors, "vectors", 2)
        if len(vectors) != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids but {len(vectors)} vectors")
        bias = np.zeros(len(vectors), dtype=np.float32) if bias is None else _as_float32(bias, "bias", 1)
        if bias.shape != (len(vectors),):
            raise ValueError(f"bias must have shape ({len(vectors)},), got {bias.shape}")
        dim = vectors.shape[1]
        augmented = np.ascontiguousarray(np.hstack([vectors, bias[:, None]]))
        if len(item_ids) < exact_threshold:
            index, kind = faiss.IndexFlatIP(dim + 1), "exact"
        else:
            index, kind = faiss.IndexHNSWFlat(dim + 1, hnsw_m, faiss.METRIC_INNER_PRODUCT), "hnsw"
            index.hnsw.efConstruction = ef_construction
        index.add(augmented)
        return cls(item_ids, index, kind, dim, ef_search)

    def search(self, user_vectors: np.ndarray, n: int, exclude: Exclusions = None) -> tuple[np.ndarray, np.ndarray]:
        """The `n` best items per user: ``(item_ids [n_users, n] object, scores [n_users, n] float32)``.

        `exclude` is either a boolean mask [n_users, n_items] over this
        index's items (in ``item_ids`` order) or, per user, a collection of
        item ids (ids outside the index are ignored). Rows with fewer than `n`
        allowed items (or, for HNSW, fewer found) are padded with ``None`` and
        ``-inf``. Scores are exact: ``user · item + item_bias``.
        """
        positions, scores = self.search_positions(user_vectors, n, exclude)
        return self._ids[positions], scores

    def search_positions(
        self, user_vectors: np.ndarray, n: int, exclude: Exclusions = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, with positions in ``item_ids`` (``-1`` for padding) instead of ids."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        users = _as_float32(user_vectors, "user_vectors", 2)
        if users.shape[1] != self.dim:
            raise ValueError(f"user vectors have {users.shape[1]} dimensions, the index {self.dim}")
        excluded = self._excluded_positions(exclude, len(users))
        queries = np.ascontiguousarray(np.hstack([users, np.ones((len(users), 1), dtype=np.float32)]))
        positions = np.full((len(users), n), -1, dtype=np.int64)
        scores = np.full((len(users), n), -np.inf, dtype=np.float32)
        for start in range(0, len(users), QUERY_BLOCK):
            block = slice(start, start + QUERY_BLOCK)
            block_excluded = excluded[block] if excluded is not None else None
            most_excluded = max((len(e) for e in block_excluded), default=0) if block_excluded else 0
            fetch = min(n + most_excluded, len(self.item_ids))
            if fetch == 0:
                continue
            if self.kind == "hnsw":
                self.index.hnsw.efSearch = max(self.ef_search, fetch)
            found_scores, found = self.index.search(queries[block], fetch)
            if not most_excluded:  # nothing to drop: the common serving case, without a loop over users
                positions[block, : found.shape[1]] = found[:, :n]
                scores[block, : found.shape[1]] = found_scores[:, :n]
                continue
            keep = found >= 0
            rows = np.repeat(np.arange(len(found)), [len(e) for e in block_excluded])
            if len(rows):
                # (row, position) pairs as one integer each: one membership test for the whole block.
                pairs = rows * len(self.item_ids) + np.concatenate(block_excluded)
                keep &= ~np.isin(np.arange(len(found))[:, None] * len(self.item_ids) + found, pairs)
            # The first n kept of each row, in the index's order.
            column = np.cumsum(keep, axis=1) - 1
            taken = keep & (column < n)
            found_rows, found_columns = np.nonzero(taken)
            positions[start + found_rows, column[taken]] = found[found_rows, found_columns]
            scores[start + found_rows, column[taken]] = found_scores[found_rows, found_columns]
        scores[positions < 0] = -np.inf
        return positions, scores

    def _excluded_positions(self, exclude: Exclusions, n_users: int) -> list[np.ndarray] | None:
        """Per user, the sorted positions of the excluded items (None when nothing is excluded)."""
        if exclude is None:
            return None
        if isinstance(exclude, np.ndarray) and exclude.dtype == bool:
            if exclude.shape != (n_users, len(self.item_ids)):
                raise ValueError(f"exclude mask has shape {exclude.shape}, expected {(n_users, len(self.item_ids))}")
            return [np.flatnonzero(row) for row in exclude]
        if len(exclude) != n_users:
            raise ValueError(f"exclude has {len(exclude)} entries for {n_users} users")
        return [
            np.array(sorted({self.item_position[i] for i in items if i in self.item_position}), dtype=np.int64)
            for items in exclude
        ]

    def save(self, directory: str | Path) -> Path:
        """Write the index, its item ids and settings into `directory` (created if needed)."""
        faiss = _faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / ITEMS_FILE).write_text(json.dumps(self.item_ids))
        meta = {"kind": self.kind, "dim": self.dim, "ef_search": self.ef_search, "bias_dimension": "last"}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        """An index written by :meth:`save`."""
        faiss = _faiss()
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        index = faiss.read_index(str(directory / INDEX_FILE))
        item_ids = json.loads((directory / ITEMS_FILE).read_text())
        if index.ntotal != len(item_ids) or index.d != meta["dim"] + 1:
            raise ValueError(f"{directory}: the index holds {index.ntotal} vectors of {index.d} dimensions, "
                             f"the metadata {len(item_ids)} items of {meta['dim']} + 1")
        return cls(item_ids, index, meta["kind"], meta["dim"], meta["ef_search"])
