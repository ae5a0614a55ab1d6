"""What each stage of the funnel does to the lists: retrieval -> ranking -> re-ranking.

:func:`stage_report` takes every user's top-k list after each stage and
computes, per stage:

- ``users``: lists in the stage; ``mean_length``: mean list length (<= k);
- ``coverage``: distinct items over all lists / catalogue size;
- ``ild_category``: intra-list diversity, the mean over lists of the share of
  item pairs whose categories differ (an item without a category differs
  from everything); lists of fewer than 2 items are left out;
- ``ild_embedding`` (when item vectors are given): the mean over lists of the
  mean pairwise cosine distance ``1 - cos`` (pairs with a missing vector are
  left out);
- ``distinct_categories``: mean number of distinct known categories per list;
- ``ndcg@k`` (when relevance is given): mean NDCG@k over the users with at
  least one relevant item (:func:`recflow.evaluation.metrics.ndcg_at_k`; a
  user missing from a stage counts with an empty list).

The result is a DataFrame indexed by stage, in the order given;
:func:`render_markdown` and :func:`render_html` turn it into a small table.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from recflow.evaluation.metrics import ndcg_at_k

Lists = Mapping[str, Sequence[str]]


def lists_from_frame(
    frame: pd.DataFrame, user_column: str = "user_id", item_column: str = "item_id", order_column: str = "rank"
) -> dict[str, list[str]]:
    """``{user: [items, best first]}`` from a long frame (e.g. :func:`rerank_batch`'s output).

    `order_column` ascending is best first (a rank); pass a score column
    prefixed with ``-`` (``"-score"``) to sort it descending instead.
    """
    descending = order_column.startswith("-")
    column = order_column.lstrip("-")
    ordered = frame.sort_values([user_column, column], ascending=[True, not descending], kind="stable")
    return {str(user): [str(i) for i in group[item_column]] for user, group in ordered.groupby(user_column, sort=False)}


def _category_ild(categories: list[str | None]) -> float:
    length = len(categories)
    if length < 2:
        return np.nan
    _, counts = np.unique([c for c in categories if c is not None], return_counts=True)
    same_pairs = float((counts * (counts - 1) / 2).sum())
    return 1.0 - same_pairs / (length * (length - 1) / 2)


def _embedding_ild(items: Sequence[str], vectors: Mapping[str, np.ndarray]) -> float:
    rows = [np.asarray(vectors[item], dtype=np.float64) for item in items if item in vectors]
    if len(rows) < 2:
        return np.nan
    matrix = np.stack(rows)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    upper = np.triu_indices(len(rows), k=1)
    return float((1.0 - (unit @ unit.T)[upper]).mean())


def _nanmean(values: list[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    return float(array.mean()) if len(array) else np.nan


def stage_report(
    stages: Mapping[str, Lists],
    item_categories: Mapping[str, str | None],
    k: int,
    relevant: Mapping[str, Collection[str]] | None = None,
    item_vectors: Mapping[str, np.ndarray] | None = None,
    catalog_size: int | None = None,
) -> pd.DataFrame:
    """Per-stage list statistics (see the module docstring); one row per stage.

    `stages` maps a stage name to ``{user: [item ids, best first]}``; lists
    are cut to k. `item_categories` is the catalogue (its size is the
    coverage denominator unless `catalog_size` is given).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    catalog_size = catalog_size if catalog_size is not None else len(item_categories)
    if catalog_size < 1:
        raise ValueError("the catalogue is empty: coverage is undefined")
    evaluated = [user for user, items in (relevant or {}).items() if len(items)]
    item_index: dict[str, int] = {}
    for items in (relevant or {}).values():
        for item in items:
            item_index.setdefault(str(item), len(item_index))

    rows = {}
    for stage, lists in stages.items():
        # Repeats are dropped (a repeated hit would count twice), then lists are cut to k.
        cut = {str(user): list(dict.fromkeys(str(item) for item in items))[:k] for user, items in lists.items()}
        recommended = {item for items in cut.values() for item in items}
        categories = {user: [_known(item_categories.get(item)) for item in items] for user, items in cut.items()}
        row = {
            "users": len(cut),
            "mean_length": _nanmean([len(items) for items in cut.values()]),
            "coverage": len(recommended) / catalog_size,
            "ild_category": _nanmean([_category_ild(c) for c in categories.values()]),
            "distinct_categories": _nanmean([len({c for c in cats if c is not None}) for cats in categories.values()]),
        }
        if item_vectors is not None:
            row["ild_embedding"] = _nanmean([_embedding_ild(items, item_vectors) for items in cut.values()])
        if relevant is not None:
            row[f"ndcg@{k}"] = _mean_ndcg(cut, relevant, evaluated, item_index, k)
        rows[stage] = row
    report = pd.DataFrame.from_dict(rows, orient="index")
    report.index.name = "stage"
    return report


def _known(category) -> str | None:
    if category is None or (isinstance(category, float) and np.isnan(category)):
        return None
    return str(category)


def _mean_ndcg(
    lists: dict[str, list[str]],
    relevant: Mapping[str, Collection[str]],
    users: list[str],
    item_index: dict[str, int],
    k: int,
) -> float:
    if not users:
        return np.nan
    # Items outside every relevant set share no index with a relevant item; give them fresh ones.
    index = dict(item_index)
    recommended = np.full((len(users), k), -1, dtype=np.int64)
    for row, user in enumerate(users):
        for column, item in enumerate(lists.get(str(user), [])):
            recommended[row, column] = index.setdefault(item, len(index))
    relevance = [np.array([item_index[str(item)] for item in relevant[user]], dtype=np.int64) for user in users]
    return float(ndcg_at_k(recommended, relevance, k).mean())


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def render_markdown(report: pd.DataFrame, title: str | None = None) -> str:
    """The report as a Markdown table (with a heading when `title` is given)."""
    header = [report.index.name or "stage", *map(str, report.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for stage, row in report.astype(object).iterrows():
        cells = [str(stage), *(_cell(v) for v in row)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(([f"## {title}", ""] if title else []) + lines)


def render_html(report: pd.DataFrame, title: str | None = None) -> str:
    """The report as an HTML fragment: an optional heading and one table."""
    header = [report.index.name or "stage", *map(str, report.columns)]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for stage, row in report.astype(object).iterrows():
        cells = [f"<th>{html.escape(str(stage))}</th>"]
        cells += [f'<td class="num">{html.escape(_cell(v))}</td>' for v in row]
        body.append("<tr>" + "".join(cells) + "</tr>")
    heading = f"<h2>{html.escape(title)}</h2>" if title else ""
    return f'{heading}<table class="stage-report"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
