"""User x item cross features of the ranking stage, computed the same way offline and online.

The ranking model reads everything the feature service `ranking_v1` serves
(the `user_*` / `item_*` columns, encoded by
:class:`recflow.training.features.Preprocessor`), the retrieval score, and the
cross features below. Feast has no view for them: they relate one user's
history to one candidate, so they only exist once a candidate is paired with a
user. :func:`cross_features` computes them from the joined frame and nothing
else, so the training set (offline, one row per labelled impression) and the
serving request (online, one row per candidate) go through the same function.
A value depends only on its own row and the item -> category lookup frozen at
training time: scoring rows one by one or in one batch gives identical numbers
(tested).

Columns (NaN where an input is missing; the ranker imputes NaN with the
training mean, as the preprocessor does for Feast features):

- ``cross_history_category_count``: how many of the user's last
  ``max_history`` clicked items share the candidate's category.
- ``cross_history_category_fraction``: that count over the history items whose
  category is known; NaN for an empty history (no evidence either way).
- ``cross_category_in_history``: 1.0 if the count is positive.
- ``cross_last_item_same_category``: 1.0 if the most recent click shares the
  candidate's category.
- ``cross_log_item_age_hours``: log1p of the candidate's age at the row's
  ``event_timestamp`` (request time online), from ``item_created_ts``.
- ``cross_log_hours_since_last_click``: log1p of the hours between the user's
  last click (``user_last_click_ts``) and the row's timestamp.

A candidate with no category (null) gets NaN category features; a category
never seen in training gets zero counts, which is the truth: no history item
can have it, since history categories come from the same lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recflow.training.features import ITEM_ID, TIMESTAMP, Vocabulary, float_values, to_arrow

HISTORY_COLUMN = "user_recent_item_ids"
CATEGORY_COLUMN = "item_category"
ITEM_CREATED_COLUMN = "item_created_ts"
LAST_CLICK_COLUMN = "user_last_click_ts"

CROSS_FEATURES = (
    "cross_history_category_count",
    "cross_history_category_fraction",
    "cross_category_in_history",
    "cross_last_item_same_category",
    "cross_log_item_age_hours",
    "cross_log_hours_since_last_click",
)


def to_strings(column: pd.Series | Sequence) -> pa.Array:
    array = to_arrow(column)
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), pa.large_string())
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return array
    return array.cast(pa.large_string())


class CategoryLookup:
    """Item id -> category, frozen at training time and saved with the ranker.

    Held as :class:`recflow.training.features.Vocabulary` objects, so a
    lookup of many ids is one ``index_in`` kernel call and a lookup of a few
    (one request's histories) a dict lookup. Items are kept sorted by id, so
    the saved form is deterministic.
    """

    def __init__(self, mapping: Mapping[str, str | None]) -> None:
        normalised = {str(item): category for item, category in mapping.items()}
        items = sorted(normalised)
        categories = [normalised[item] for item in items]
        categories = [None if _is_missing(c) else str(c) for c in categories]
        self.item_ids: list[str] = items
        self.categories: list[str | None] = categories
        self.category_names: list[str] = sorted({c for c in categories if c is not None})
        self._items = Vocabulary(items)
        self._category_vocab = Vocabulary(self.category_names)
        codes = self.category_codes(pa.array(categories, pa.large_string()))
        # Position len(items) is the "not in the lookup" slot: category code -1.
        self._item_codes = np.append(codes, -1)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, item_column: str = ITEM_ID, category_column: str = CATEGORY_COLUMN
    ) -> CategoryLookup:
        """Each item's most frequent non-null category in `frame` (ties: the smallest name)."""
        pairs = pd.DataFrame(
            {
                "item": to_strings(frame[item_column]).to_pandas(),
                "category": to_strings(frame[category_column]).to_pandas(),
            }
        ).dropna()
        counts = pairs.value_counts().reset_index(name="n")
        counts = counts.sort_values(["item", "n", "category"], ascending=[True, False, True], kind="stable")
        first = counts.drop_duplicates("item")
        return cls(dict(zip(first["item"], first["category"])))

    def merged(self, other: Mapping[str, str | None]) -> CategoryLookup:
        """A lookup with `other`'s entries added (they win over this one's)."""
        mapping = dict(zip(self.item_ids, self.categories))
        mapping.update({str(k): v for k, v in other.items()})
        return CategoryLookup(mapping)

    def __len__(self) -> int:
        return len(self.item_ids)

    def to_dict(self) -> dict[str, list]:
        return {"item_ids": self.item_ids, "categories": self.categories}

    @classmethod
    def from_dict(cls, state: Mapping[str, list]) -> CategoryLookup:
        return cls(dict(zip(state["item_ids"], state["categories"])))

    def category_codes(self, categories: pa.Array) -> np.ndarray:
        """Index of each category in :attr:`category_names`; -1 for null or unseen."""
        return self._category_vocab.positions(categories)

    def item_category_codes(self, item_ids: pa.Array) -> np.ndarray:
        """Category code of each item id; -1 for items not in the lookup or without a category."""
        return self._item_codes[self._items.positions(item_ids)]  # -1 (not in the lookup) -> the last slot


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def epoch_seconds(column: pd.Series | np.ndarray) -> np.ndarray:
    """float64 epoch seconds of a timestamp or numeric (epoch seconds) column; NaN for nulls."""
    dtype = column.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or dtype.kind == "M":
        if isinstance(column, np.ndarray):
            ticks = column.astype("datetime64[ns]").view(np.int64)
        else:
            ticks = column.to_numpy(dtype="datetime64[ns]").view(np.int64)
        values = ticks.astype(np.float64) / 1e9
        values[ticks == np.iinfo(np.int64).min] = np.nan  # NaT
        return values
    array = None if dtype.kind in "biuf" else to_arrow(column)
    if array is not None and pa.types.is_timestamp(array.type):  # Arrow-backed timestamps
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[array.type.unit]
        ticks = array.cast(pa.int64())
        values = pc.fill_null(ticks, 0).to_numpy(zero_copy_only=False).astype(np.float64) / scale
        values[ticks.is_null().to_numpy(zero_copy_only=False)] = np.nan
        return values
    return float_values(column)


def _log_hours(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    hours = np.maximum(later - earlier, 0.0) / 3600.0  # NaN stays NaN
    return np.log1p(hours)


def cross_features(
    frame: pd.DataFrame,
    item_categories: CategoryLookup | Mapping[str, str | None],
    *,
    max_history: int | None = None,
    history_column: str = HISTORY_COLUMN,
    category_column: str = CATEGORY_COLUMN,
) -> pd.DataFrame:
    """The :data:`CROSS_FEATURES` of every row of `frame` (see the module docstring).

    `item_categories` maps history item ids to categories (pass the ranker's
    frozen lookup, ``ranker.item_categories``, so serving matches training);
    `max_history` keeps only each history's most recent items, as the model
    does. The candidate's category is read from `category_column`, or looked
    up by `item_id` when the frame has no such column. Vectorised: one Arrow
    lookup over the flattened histories of all rows, then numpy.
    """
    lookup = item_categories if isinstance(item_categories, CategoryLookup) else CategoryLookup(item_categories)
    arrays = cross_feature_arrays(
        frame, lookup, max_history=max_history, history_column=history_column, category_column=category_column
    )
    return pd.DataFrame(arrays, index=frame.index)


def cross_feature_arrays(
    frame: pd.DataFrame,
    lookup: CategoryLookup,
    *,
    max_history: int | None = None,
    history_column: str = HISTORY_COLUMN,
    category_column: str = CATEGORY_COLUMN,
) -> dict[str, np.ndarray]:
    """:func:`cross_features` as a dict of float64 arrays (the ranker's scoring path: no DataFrame)."""
    n = len(frame)
    candidate = candidate_categories(frame, lookup, category_column)
    codes, null = candidate if candidate is not None else (np.full(n, -1), np.ones(n, dtype=bool))
    history = None
    if history_column in frame.columns and n:
        history = HistoryCategories.of(frame[history_column], lookup)
    return combine_cross_features(
        codes,
        null,
        history,
        now=epoch_seconds(frame[TIMESTAMP]) if TIMESTAMP in frame.columns else None,
        item_created=epoch_seconds(frame[ITEM_CREATED_COLUMN]) if ITEM_CREATED_COLUMN in frame.columns else None,
        last_click=epoch_seconds(frame[LAST_CLICK_COLUMN]) if LAST_CLICK_COLUMN in frame.columns else None,
        max_history=max_history,
    )


# The parts of a row the cross features read, each computable on its own:
# the ranker computes the candidate's parts once per snapshot item and the
# history's once per user, then combines them for every (user, candidate) row
# with the same function the frame path above uses.


def candidate_categories(
    frame: pd.DataFrame, lookup: CategoryLookup, category_column: str = CATEGORY_COLUMN
) -> tuple[np.ndarray, np.ndarray] | None:
    """(category code, category is null) of each row's candidate; None when `frame` can tell neither.

    Read from `category_column`, or looked up by `item_id` when the frame has no such column.
    """
    if category_column in frame.columns:
        raw_categories = to_strings(frame[category_column])
        return lookup.category_codes(raw_categories), raw_categories.is_null().to_numpy(zero_copy_only=False)
    if ITEM_ID in frame.columns:
        codes = lookup.item_category_codes(to_strings(frame[ITEM_ID]))
        return codes, codes < 0
    return None


@dataclass(frozen=True)
class HistoryCategories:
    """Category codes of the items of each row's history, flattened (each row's items newest last)."""

    codes: np.ndarray  # int64 [sum(lengths)]; -1 where the item has no known category
    lengths: np.ndarray  # int64 [rows]: history items per row (0 for a null history)

    @classmethod
    def of(cls, column: pd.Series, lookup: CategoryLookup) -> HistoryCategories:
        lists = to_arrow(column)
        if pa.types.is_null(lists.type):
            lists = pa.nulls(len(column), pa.list_(pa.large_string()))
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        return cls(lookup.item_category_codes(to_strings(lists.flatten())), lengths)


def _take_ragged(values: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of `values` (``lengths[i]`` items for row i, in row order) of `rows`, concatenated."""
    starts = np.cumsum(lengths) - lengths
    taken = lengths[rows]
    offsets = np.arange(int(taken.sum())) - np.repeat(np.cumsum(taken) - taken, taken)
    return values[np.repeat(starts[rows], taken) + offsets], taken


def combine_cross_features(
    candidate: np.ndarray,
    candidate_null: np.ndarray,
    history: HistoryCategories | None,
    *,
    history_rows: np.ndarray | None = None,
    now: np.ndarray | None = None,
    item_created: np.ndarray | None = None,
    last_click: np.ndarray | None = None,
    max_history: int | None = None,
) -> dict[str, np.ndarray]:
    """The :data:`CROSS_FEATURES` of rows given by parts (see the module docstring for the values).

    Per row: the candidate's category code and null flag, and epoch seconds
    of the row's timestamp (`now`), the candidate's creation and the user's
    last click (None: NaN features). `history` holds the histories' category
    codes; row i reads history ``history_rows[i]`` (default: history i), so
    a request's histories are looked up once per user, not once per row.
    """
    n = len(candidate)
    out = {name: np.full(n, np.nan) for name in CROSS_FEATURES}

    if history is not None:
        codes, lengths = history.codes, history.lengths
        ends = np.cumsum(lengths)
        has_history = lengths > 0
        last_codes = np.full(len(lengths), -1)
        last_codes[has_history] = codes[ends[has_history] - 1]  # newest item of each history
        if max_history is not None:
            position_from_end = np.repeat(ends, lengths) - np.arange(len(codes))  # 1 = newest
            codes, lengths = codes[position_from_end <= max_history], np.minimum(lengths, max(max_history, 0))
        if history_rows is not None:
            last_codes = last_codes[history_rows]
            codes, lengths = _take_ragged(codes, lengths, history_rows)
        rows = np.repeat(np.arange(n), lengths)
        known = codes >= 0
        match = known & (codes == candidate[rows])
        count = np.bincount(rows[match], minlength=n).astype(np.float64)
        known_count = np.bincount(rows[known], minlength=n).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(known_count > 0, count / np.maximum(known_count, 1.0), np.nan)
        valid = ~candidate_null
        out["cross_history_category_count"] = np.where(valid, count, np.nan)
        out["cross_history_category_fraction"] = np.where(valid, fraction, np.nan)
        out["cross_category_in_history"] = np.where(valid, (count > 0).astype(np.float64), np.nan)
        same_last = ((last_codes >= 0) & (last_codes == candidate)).astype(np.float64)
        out["cross_last_item_same_category"] = np.where(valid, same_last, np.nan)

    if now is not None:
        if item_created is not None:
            out["cross_log_item_age_hours"] = _log_hours(now, item_created)
        if last_click is not None:
            out["cross_log_hours_since_last_click"] = _log_hours(now, last_click)
    return out
