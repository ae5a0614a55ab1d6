"""Served-score histograms: the buckets of ``recflow_served_score``, and a model's histogram at export.

The model server counts the scores it serves over :data:`SCORE_BUCKETS`
(``serving/metrics.py``); export counts the bundle's own scores over the same
buckets (:func:`recflow.monitoring.live.bundle_references`), so the canary
analysis can compare a model's live scores with those it gave when it was
blessed. This module registers no metric: importing it adds nothing to a
process's ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Upper bounds (Prometheus ``le``) of the served-score buckets; a last bucket, +Inf, holds the rest.
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


def bucket_counts(scores: Iterable[float], bounds: Sequence[float] = SCORE_BUCKETS) -> tuple[int, ...]:
    """Values per bucket as Prometheus counts them: each in the first bucket whose bound is at least it, +Inf last."""
    positions = np.searchsorted(bounds, np.fromiter(scores, dtype=float), side="left")
    return tuple(int(count) for count in np.bincount(positions, minlength=len(bounds) + 1))


@dataclass(frozen=True)
class ScoreReference:
    """A model's served-score histogram at export: counts per bucket (+Inf last) and the answers they come from.

    ``answers``: the users' lists the scores belong to. The scores of one list
    move together, so a significance test counts each answer once.
    """

    counts: tuple[float, ...]
    answers: int
