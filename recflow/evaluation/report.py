"""The evaluation report: one self-contained HTML page and a Markdown twin.

The HTML page embeds its CSS and its plots (base64 PNGs) so it can be opened
from a pipeline artifact store, attached to a ticket or mailed without a
server or missing images. The Markdown version carries the same tables without
plots, for the KFP Markdown visualisation. Every piece of text that comes from
data (recommender names, context values, check details) is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from recflow.evaluation.evaluate import EvaluationResult, compare
from recflow.evaluation.gate import BlessingDecision

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1f2328; padding: 0 1rem; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #1a7f37; font-weight: 600; }
.fail { color: #cf222e; font-weight: 600; }
.verdict { font-size: 1.2rem; padding: .6rem 1rem; border-radius: 6px; display: inline-block; }
.verdict.pass { background: #dafbe1; }
.verdict.fail { background: #ffebe9; }
.plots img { max-width: 100%; display: block; margin: 1rem 0; }
"""


def _require(results: dict[str, EvaluationResult]) -> None:
    if not results:
        raise ValueError("a report needs at least one evaluation result")


def png_data_uri(figure: Figure) -> str:
    """The figure as a data URI, rendered with the Agg canvas (no display, no pyplot state)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _label(name: str) -> str:
    """A legend label shown verbatim: no mathtext, and not hidden by a leading underscore."""
    label = name.replace("$", r"\$")
    return " " + label if label.startswith("_") else label


def _legend(axes) -> None:
    """The legend beside the axes, where it cannot hide bars or curves."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _rate_metrics(results: dict[str, EvaluationResult]) -> list[str]:
    """The metrics on a 0..1 scale (all but the user count), in first-seen order."""
    names: list[str] = []
    for result in results.values():
        names += [m for m in result.metrics if m != "users" and m not in names]
    return names


def _bar_chart(results: dict[str, EvaluationResult]) -> str:
    metrics = _rate_metrics(results)
    figure = Figure(figsize=(10, 4))
    axes = figure.add_subplot()
    width = 0.8 / len(results)
    positions = np.arange(len(metrics))
    for i, (name, result) in enumerate(results.items()):
        values = [result.metrics.get(m, np.nan) for m in metrics]
        axes.bar(positions + (i - (len(results) - 1) / 2) * width, values, width, label=_label(name))
    axes.set_xticks(positions, metrics)
    axes.set_ylabel("value")
    axes.set_title("Metrics per recommender")
    _legend(axes)
    return png_data_uri(figure)


def _ndcg_curves(results: dict[str, EvaluationResult]) -> str:
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for name, result in results.items():
        ks = sorted(result.ndcg_curve)
        axes.plot(ks, [result.ndcg_curve[k] for k in ks], marker="o", label=_label(name))
    axes.set_xlabel("k")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("mean NDCG@k")
    axes.set_title("NDCG@k")
    _legend(axes)
    return png_data_uri(figure)


def _ndcg_histogram(results: dict[str, EvaluationResult]) -> str:
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    bins = np.linspace(0.0, 1.0, 21)
    for name, result in results.items():
        axes.hist(result.per_user[f"ndcg@{result.k}"], bins=bins, histtype="step", linewidth=1.5, label=_label(name))
    axes.set_xlabel("per-user NDCG@k")
    axes.set_ylabel("users")
    axes.set_title("Distribution of per-user NDCG")
    _legend(axes)
    return png_data_uri(figure)


def _format(value: Any) -> str:
    """Floats with 4 decimals, structures as compact JSON, anything else as str."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _tables(
    results: dict[str, EvaluationResult], decision: BlessingDecision | None, context: dict[str, Any]
) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Each table as (header, rows of formatted, not yet escaped, cells)."""
    metrics = compare(results)
    tables = {
        "metrics": (
            ["recommender", *metrics.columns],
            [
                [str(name), *(str(int(v)) if column == "users" else _format(v) for column, v in row.items())]
                for name, row in metrics.iterrows()
            ],
        ),
        "context": (["key", "value"], [[str(key), _format(value)] for key, value in context.items()]),
    }
    if decision is not None:
        tables["checks"] = (
            ["check", "metric", "value", "threshold", "result", "detail"],
            [
                [c.name, c.metric, _format(c.value), _format(c.threshold), "PASS" if c.passed else "FAIL", c.detail]
                for c in decision.checks
            ],
        )
    return tables


def _verdict(decision: BlessingDecision) -> str:
    reference = "the last blessed model" if decision.compared_with_blessed else "the popularity baseline only"
    status = "BLESSED" if decision.blessed else "NOT BLESSED"
    passed = sum(c.passed for c in decision.checks)
    return f"{status} ({passed}/{len(decision.checks)} checks passed, compared with {reference})"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if cell in ("PASS", "FAIL"):
                cells.append(f'<td class="{cell.lower()}">{cell}</td>')
            else:
                attributes = ' class="num"' if _is_number(cell) else ""
                cells.append(f"<td{attributes}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(
    title: str,
    results: dict[str, EvaluationResult],
    decision: BlessingDecision | None,
    context: dict[str, Any],
) -> str:
    """A self-contained HTML report: verdict, plots, metrics, gate checks and context."""
    _require(results)
    tables = _tables(results, decision, context)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if decision is not None:
        css_class = "pass" if decision.blessed else "fail"
        parts.append(f'<p class="verdict {css_class}">{html.escape(_verdict(decision))}</p>')
    parts += ["<h2>Metrics</h2>", _html_table(*tables["metrics"])]
    parts += [
        '<div class="plots">',
        f'<img src="{_bar_chart(results)}" alt="metrics per recommender">',
        f'<img src="{_ndcg_curves(results)}" alt="NDCG at k per recommender">',
        f'<img src="{_ndcg_histogram(results)}" alt="histogram of per-user NDCG">',
        "</div>",
    ]
    if decision is not None:
        parts += ["<h2>Blessing checks</h2>", _html_table(*tables["checks"])]
    parts += ["<h2>Context</h2>", _html_table(*tables["context"]), "</body></html>"]
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    """Text safe in a Markdown table cell: HTML escaped, pipes and backslashes escaped, one line."""
    return html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(
    title: str,
    results: dict[str, EvaluationResult],
    decision: BlessingDecision | None,
    context: dict[str, Any],
) -> str:
    """The tables of :func:`render_html` as Markdown, for the KFP Markdown artifact."""
    _require(results)
    tables = _tables(results, decision, context)
    parts = [f"# {_md_cell(title)}"]
    if decision is not None:
        parts.append(f"**{_verdict(decision)}**")
    parts += ["## Metrics", _md_table(*tables["metrics"])]
    if decision is not None:
        parts += ["## Blessing checks", _md_table(*tables["checks"])]
    parts += ["## Context", _md_table(*tables["context"])]
    return "\n\n".join(parts) + "\n"
