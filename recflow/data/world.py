"""A seeded synthetic recommender world with a known ground truth.

Real logs never tell you what a user *would* have clicked, so models can only be
compared with each other. This world does: it simulates the exposure log of a
production recommender from a hidden generative model, and keeps that model
(the :class:`GroundTruth`) so evaluation can compare any ranking with the oracle.

Generative model
----------------
* **Latent space.** Each of ``n_categories`` categories has a random centre in a
  ``latent_dim``-dimensional space (norm about 1). An item belongs to one
  category and its vector is the centre plus noise (``item_spread``), so items of
  one category are alike. Each user has a region (``segment``) and a category mix
  drawn from a Dirichlet centred on the region's taste; the user's vector is the
  mix-weighted sum of centres plus personal noise (``user_spread``).
* **Popularity and quality.** Each item has a standard-normal popularity ``z``.
  Exposure weight grows as ``exp(popularity_sigma * z)`` (a lognormal long tail)
  and click propensity as ``quality_weight * z`` (popular items are somewhat better).
* **Time.** A fraction of the items exists before day 0; the rest are created
  uniformly over the days and are shown only from the day after their creation.
  New items get an exposure boost that fades with age (freshness). A fraction of
  the users signs up during the window and is active from the next day on.
* **Exposure (the logged policy).** Each day a user opens Poisson(rate) sessions,
  where the rate is heavy-tailed across users (lognormal activity). A session
  shows about ``impressions_per_session`` distinct items. Each slot is filled
  either by the popularity channel (an item drawn by exposure weight) or by the
  personal channel: a category drawn from the user's current mix, a few
  candidates drawn by exposure weight inside it, and the one with the best
  *noisy* relevance score shown. So impressions are biased, like real logs.
* **Outcome.** ``P(click) = sigmoid(click_bias + user_bias + quality_weight * z
  + affinity_weight * <user vector on that day, item vector>)``. A click has a
  lognormal dwell time that grows with the user-item match; no click has dwell 0.
  Ratings are null.
* **Drift.** Every user also has a second category mix concentrated on a few
  "trending" categories. From ``drift_start_day`` on, both the user's vector and
  the mix used for exposure move a fraction ``drift_strength`` towards it, so
  the category distribution of clicks shifts measurably.

Ids are strings (``u12``, ``i7``, ``e1042``); timestamps are UTC with
microsecond resolution, spread uniformly over the day.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recflow.data.dataset import GROUND_TRUTH_DIR, Dataset, write_dataset

logger = logging.getLogger("recflow.data.world")

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND
# Seconds between two consecutive impressions of one session (plus jitter below it).
IMPRESSION_GAP_SECONDS = 6
# How far before start_date the initial items and users were created.
HISTORY_DAYS = 730
REGIONS = ("north_america", "europe", "asia_pacific", "latin_america", "africa", "middle_east")
REGION_SHARES = (0.30, 0.25, 0.25, 0.10, 0.05, 0.05)
# Rows of the [users x items] block the oracle computes at once: bounds its scratch memory.
AFFINITY_BLOCK_ELEMENTS = 1 << 20


class WorldConfig(BaseModel):
    """Every knob of the synthetic world; the same config and seed give the same world."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0, description="Seed of every random draw in the world.")
    n_users: int = Field(gt=0, description="Number of users.")
    n_items: int = Field(gt=0, description="Number of items, including those created during the window.")
    n_categories: int = Field(gt=0, description="Number of item categories (at most n_items).")
    days: int = Field(gt=0, description="Number of simulated days; day 0 is start_date.")
    start_date: dt.date = Field(
        dt.date(2026, 1, 1),
        description="UTC date of day 0; the simulated window must not reach into the future.",
    )
    latent_dim: int = Field(16, gt=0, description="Dimension of the user and item taste vectors.")
    item_spread: float = Field(
        0.6, ge=0, description="Spread of item vectors around their category centre (centre norm is ~1)."
    )
    user_spread: float = Field(0.5, ge=0, description="Personal taste noise added to a user's category mix.")
    category_concentration: float = Field(
        0.3,
        gt=0,
        description="Dirichlet concentration per category of user mixes; small = users focus on few categories.",
    )
    initial_item_fraction: float = Field(
        0.7, gt=0, le=1, description="Fraction of items that exist at day 0; the rest arrive uniformly over the days."
    )
    new_user_fraction: float = Field(
        0.1, ge=0, lt=1, description="Fraction of users who sign up during the window (active from the next day)."
    )
    popularity_sigma: float = Field(
        1.5, ge=0, description="Lognormal sigma of item exposure weights: larger = longer popularity tail."
    )
    freshness_boost: float = Field(
        2.0, ge=0, description="Extra exposure weight (as a multiple) of a brand-new item."
    )
    freshness_days: float = Field(3.0, gt=0, description="Age in days over which the freshness boost decays by 1/e.")
    sessions_per_user_day: float = Field(gt=0, description="Mean sessions per user per day, over all users.")
    activity_sigma: float = Field(
        1.2, ge=0, description="Lognormal sigma of per-user activity: larger = a few very active users."
    )
    impressions_per_session: float = Field(8.0, ge=1, description="Mean impressions (slots) in one session.")
    popularity_exposure: float = Field(
        0.35, ge=0, le=1, description="Share of slots the logged policy fills by popularity instead of relevance."
    )
    retrieval_candidates: int = Field(
        8, ge=1, description="Candidates the logged policy's personal channel ranks to fill one slot."
    )
    ranking_noise: float = Field(
        0.3, ge=0, description="Std of the noise on the logged policy's relevance scores (its imperfection)."
    )
    click_bias: float = Field(-4.5, description="Base click logit (sets the overall CTR).")
    affinity_weight: float = Field(3.0, ge=0, description="Click logit per unit of user-item vector match.")
    quality_weight: float = Field(0.4, ge=0, description="Click logit per unit of item popularity z.")
    user_bias_sigma: float = Field(
        0.5, ge=0, description="Std of per-user click logit offsets (some users click more)."
    )
    dwell_median_seconds: float = Field(30.0, gt=0, description="Median dwell of a click at zero user-item match.")
    dwell_affinity_weight: float = Field(
        0.3, ge=0, description="Log-dwell increase per unit of the match's click logit (better match = longer dwell)."
    )
    dwell_sigma: float = Field(0.7, ge=0, description="Lognormal sigma of dwell noise.")
    drift_start_day: int | None = Field(
        None, ge=0, description="First day with drifted tastes; None = no drift. Must be < days."
    )
    drift_strength: float = Field(
        0.0, ge=0, le=1, description="How far (0..1) tastes move towards the trending mix from drift_start_day on."
    )
    trending_fraction: float = Field(
        0.25, gt=0, le=1, description="Fraction of categories that drifted tastes concentrate on."
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> WorldConfig:
        if self.n_categories > self.n_items:
            raise ValueError(f"n_categories ({self.n_categories}) must be <= n_items ({self.n_items})")
        if self.drift_start_day is not None and self.drift_start_day >= self.days:
            raise ValueError(f"drift_start_day ({self.drift_start_day}) must be < days ({self.days})")
        if self.drift_strength > 0 and self.drift_start_day is None:
            raise ValueError("drift_strength > 0 needs drift_start_day (the day drift starts)")
        last_day = self.start_date + dt.timedelta(days=self.days - 1)
        today = dt.datetime.now(dt.timezone.utc).date()
        if last_day > today:
            raise ValueError(
                f"start_date {self.start_date} + days {self.days} ends on {last_day}, after today ({today}): "
                "events in the future would break point-in-time feature lookups"
            )
        return self


SCALES: dict[str, WorldConfig] = {
    # ~13k impressions (16k slots before per-session de-duplication): for unit tests.
    "tiny": WorldConfig(
        n_users=400,
        n_items=150,
        n_categories=8,
        days=10,
        sessions_per_user_day=0.7,
        impressions_per_session=6,
        drift_start_day=7,
        drift_strength=0.5,
    ),
    # ~1M impressions: a laptop demo end to end.
    "demo": WorldConfig(
        n_users=20_000,
        n_items=5_000,
        n_categories=20,
        days=30,
        sessions_per_user_day=0.22,
        drift_start_day=21,
        drift_strength=0.4,
    ),
    # ~10M impressions: for throughput benchmarks.
    "bench": WorldConfig(
        n_users=200_000,
        n_items=50_000,
        n_categories=50,
        days=30,
        sessions_per_user_day=0.22,
        drift_start_day=21,
        drift_strength=0.4,
    ),
}


def world_config(scale: str, **overrides: Any) -> WorldConfig:
    """The named scale's config with some fields replaced (validated again)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid scales: {sorted(SCALES)}")
    return WorldConfig.model_validate({**SCALES[scale].model_dump(), **overrides})


def expected_num_events(config: WorldConfig) -> float:
    """Expected number of impressions, computed from the config alone.

    It counts requested slots: user activity multipliers have mean 1 and users who
    sign up on day d are active for days - 1 - d days. The generated log is smaller
    because a session never shows the same item twice: by ~1% at demo scale, by
    ~15% in tiny's 150-item catalogue where popular items collide often.
    Per-user activity is heavy-tailed, so small worlds also vary by seed.
    """
    active_user_days = config.days * (1 - config.new_user_fraction) + config.new_user_fraction * (config.days - 1) / 2
    return config.n_users * active_user_days * config.sessions_per_user_day * config.impressions_per_session


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _drift_share(config: WorldConfig, day: int) -> float:
    """How far tastes have moved towards the trending mix on ``day``."""
    if config.drift_start_day is None or day < config.drift_start_day:
        return 0.0
    return config.drift_strength


@dataclass
class GroundTruth:
    """The hidden parameters of a world: the oracle that evaluation compares with.

    ``user_taste`` / ``user_drift_taste`` are each user's vector before drift and
    at full drift; the vector on a day is their blend (see :meth:`affinity`).
    """

    config: WorldConfig
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_taste: np.ndarray
    user_drift_taste: np.ndarray
    user_bias: np.ndarray
    item_vectors: np.ndarray
    item_popularity: np.ndarray
    _user_index: pd.Index = field(init=False, repr=False)
    _item_index: pd.Index = field(init=False, repr=False)

    ARRAYS_FILE = "arrays.npz"
    CONFIG_FILE = "config.json"

    def __post_init__(self) -> None:
        self._user_index = pd.Index(self.user_ids)
        self._item_index = pd.Index(self.item_ids)

    def affinity(self, user_ids: Sequence[str], item_ids: Sequence[str], day: int) -> np.ndarray:
        """True click probability of each user for each item if shown on ``day``.

        Returns a float64 array of shape [len(user_ids), len(item_ids)]. ``day`` is
        0-based from ``start_date``; drift applies from ``drift_start_day`` on and
        persists past the simulated window. The value ignores whether the item
        exists yet on that day (callers filter by ``created_at``). Unknown ids raise
        KeyError naming the id.

        Memory: the result takes 8 bytes per pair (5k items x 3k users = 120 MB);
        scratch space is bounded by computing it in blocks of users.
        """
        users = _positions(self._user_index, user_ids, "user")
        items = _positions(self._item_index, item_ids, "item")
        share = _drift_share(self.config, day)
        taste = self.user_taste[users] + share * (self.user_drift_taste[users] - self.user_taste[users])
        vectors = self.item_vectors[items].astype(np.float64)
        item_logit = self.config.quality_weight * self.item_popularity[items]
        user_logit = self.config.click_bias + self.user_bias[users]
        result = np.empty((len(users), len(items)), dtype=np.float64)
        block = max(1, AFFINITY_BLOCK_ELEMENTS // max(1, len(items)))
        for start in range(0, len(users), block):
            stop = start + block
            logits = self.config.affinity_weight * (taste[start:stop] @ vectors.T)
            logits += user_logit[start:stop, None]
            logits += item_logit[None, :]
            result[start:stop] = _sigmoid(logits)
        return result

    def day_index(self, timestamp: Any) -> int:
        """Simulated day (0-based, may be negative) of a timestamp; naive ones are taken as UTC."""
        ts = pd.Timestamp(timestamp)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        start = pd.Timestamp(self.config.start_date, tz="UTC")
        return int((ts - start) // pd.Timedelta(days=1))

    def save(self, directory: str | Path) -> None:
        """Write the arrays (npz) and the config (json) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            directory / self.ARRAYS_FILE,
            user_ids=self.user_ids.astype(str),
            item_ids=self.item_ids.astype(str),
            user_taste=self.user_taste,
            user_drift_taste=self.user_drift_taste,
            user_bias=self.user_bias,
            item_vectors=self.item_vectors,
            item_popularity=self.item_popularity,
        )
        (directory / self.CONFIG_FILE).write_text(self.config.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> GroundTruth:
        directory = Path(directory)
        config = WorldConfig.model_validate_json((directory / cls.CONFIG_FILE).read_text())
        with np.load(directory / cls.ARRAYS_FILE, allow_pickle=False) as arrays:
            return cls(
                config=config,
                user_ids=arrays["user_ids"].astype(object),
                item_ids=arrays["item_ids"].astype(object),
                user_taste=arrays["user_taste"],
                user_drift_taste=arrays["user_drift_taste"],
                user_bias=arrays["user_bias"],
                item_vectors=arrays["item_vectors"],
                item_popularity=arrays["item_popularity"],
            )


def _positions(index: pd.Index, ids: Sequence[str], kind: str) -> np.ndarray:
    ids = list(ids)
    positions = index.get_indexer(ids)
    missing = np.flatnonzero(positions < 0)
    if len(missing):
        raise KeyError(f"unknown {kind} id {ids[missing[0]]!r} ({len(missing)} unknown in all)")
    return positions


@dataclass
class World:
    """A generated world: frames in the canonical schemas plus the oracle."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    ground_truth: GroundTruth


@dataclass
class _Population:
    """Everything drawn once per world; the daily simulation only reads it."""

    user_taste: np.ndarray  # [users, dim] float32, before drift
    user_drift_taste: np.ndarray  # [users, dim] float32, at full drift
    user_mix_cdf: np.ndarray  # [users, categories] cumulative category mix before drift
    user_drift_mix_cdf: np.ndarray  # [users, categories] cumulative trending mix
    user_bias: np.ndarray  # [users] click logit offset
    session_rate: np.ndarray  # [users] mean sessions per day
    user_active_from: np.ndarray  # [users] first day with sessions
    user_signup_us: np.ndarray  # [users] signup time, microseconds since start_date
    user_region: np.ndarray  # [users] index into REGIONS
    user_age: np.ndarray  # [users] int32
    item_category: np.ndarray  # [items] category index
    item_vectors: np.ndarray  # [items, dim] float32
    item_popularity: np.ndarray  # [items] standard normal z
    item_created_us: np.ndarray  # [items] creation time, microseconds since start_date
    item_available_from: np.ndarray  # [items] first day the item can be shown


def _draw_population(config: WorldConfig, rng: np.random.Generator) -> _Population:
    n_users, n_items, k, dim = config.n_users, config.n_items, config.n_categories, config.latent_dim

    centres = rng.normal(0.0, 1.0 / np.sqrt(dim), size=(k, dim))
    # Every category gets at least one item, the rest are assigned at random.
    item_category = np.concatenate([rng.permutation(k), rng.integers(0, k, size=n_items - k)])
    rng.shuffle(item_category)
    item_vectors = centres[item_category] + rng.normal(0.0, config.item_spread / np.sqrt(dim), size=(n_items, dim))
    item_popularity = rng.standard_normal(n_items)

    n_initial = max(1, round(config.initial_item_fraction * n_items))
    is_initial = np.zeros(n_items, dtype=bool)
    is_initial[rng.permutation(n_items)[:n_initial]] = True
    creation_day = np.where(
        is_initial, -1 - rng.integers(0, HISTORY_DAYS, size=n_items), rng.integers(0, config.days, size=n_items)
    )
    item_created_us = creation_day * US_PER_DAY + rng.integers(0, US_PER_DAY, size=n_items)
    item_available_from = np.where(is_initial, 0, creation_day + 1)

    user_region = rng.choice(len(REGIONS), size=n_users, p=REGION_SHARES)
    region_taste = rng.dirichlet(np.full(k, 2.0), size=len(REGIONS))
    user_mix = _dirichlet_rows(rng, config.category_concentration * k * region_taste[user_region])
    n_trending = max(1, round(config.trending_fraction * k))
    trending = rng.permutation(k)[:n_trending]
    user_drift_mix = np.zeros((n_users, k))
    user_drift_mix[:, trending] = rng.dirichlet(np.full(n_trending, config.category_concentration), size=n_users)
    user_noise = rng.normal(0.0, config.user_spread / np.sqrt(dim), size=(n_users, dim))

    # Lognormal with mean exactly 1, so expected_num_events holds for any sigma.
    activity = rng.lognormal(-config.activity_sigma**2 / 2, config.activity_sigma, size=n_users)
    is_new = rng.random(n_users) < config.new_user_fraction
    signup_day = np.where(
        is_new, rng.integers(0, config.days, size=n_users), -1 - rng.integers(0, HISTORY_DAYS, size=n_users)
    )
    user_signup_us = signup_day * US_PER_DAY + rng.integers(0, US_PER_DAY, size=n_users)

    return _Population(
        user_taste=(user_mix @ centres + user_noise).astype(np.float32),
        user_drift_taste=(user_drift_mix @ centres + user_noise).astype(np.float32),
        user_mix_cdf=np.cumsum(user_mix, axis=1).astype(np.float32),
        user_drift_mix_cdf=np.cumsum(user_drift_mix, axis=1).astype(np.float32),
        user_bias=rng.normal(0.0, config.user_bias_sigma, size=n_users),
        session_rate=config.sessions_per_user_day * activity,
        user_active_from=np.where(is_new, signup_day + 1, 0),
        user_signup_us=user_signup_us,
        user_region=user_region,
        user_age=np.clip(np.round(rng.normal(36, 13, size=n_users)), 16, 85).astype(np.int32),
        item_category=item_category,
        item_vectors=item_vectors.astype(np.float32),
        item_popularity=item_popularity,
        item_created_us=item_created_us,
        item_available_from=item_available_from,
    )


def _dirichlet_rows(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """One Dirichlet draw per row of ``alpha`` (numpy's dirichlet takes a single alpha)."""
    gammas = rng.gamma(alpha)
    # A row can underflow to all zeros when every alpha is tiny; fall back to its largest alpha.
    empty = gammas.sum(axis=1) == 0
    gammas[empty, alpha[empty].argmax(axis=1)] = 1.0
    return gammas / gammas.sum(axis=1, keepdims=True)


@dataclass
class _DayLog:
    user: np.ndarray
    item: np.ndarray
    timestamp_us: np.ndarray  # since start_date
    clicked: np.ndarray
    dwell_seconds: np.ndarray


def _draw_weighted(rng: np.random.Generator, cdf: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Positions in [low, high) drawn proportionally to the weights whose running sum is ``cdf``."""
    base = np.where(low > 0, cdf[np.maximum(low - 1, 0)], 0.0)
    target = base + rng.random(len(low)) * (cdf[high - 1] - base)
    return np.clip(np.searchsorted(cdf, target, side="right"), low, high - 1)


def _simulate_day(config: WorldConfig, pop: _Population, day: int, rng: np.random.Generator) -> _DayLog:
    share = _drift_share(config, day)

    # Sessions and their slots.
    eligible = np.flatnonzero(pop.user_active_from <= day)
    session_user = np.repeat(eligible, rng.poisson(pop.session_rate[eligible]))
    session_len = 1 + rng.poisson(config.impressions_per_session - 1, size=len(session_user))
    slot_session = np.repeat(np.arange(len(session_user)), session_len)
    slot_pos = np.arange(len(slot_session)) - np.repeat(np.cumsum(session_len) - session_len, session_len)
    slot_user = session_user[slot_session]
    n_slots = len(slot_session)

    # Items that can be shown today, ordered by category, with exposure weights.
    available = np.flatnonzero(pop.item_available_from <= day)
    available = available[np.argsort(pop.item_category[available], kind="stable")]
    age_days = day - pop.item_created_us[available] / US_PER_DAY
    weight = np.exp(config.popularity_sigma * pop.item_popularity[available])
    weight *= 1.0 + config.freshness_boost * np.exp(-np.maximum(age_days, 0.0) / config.freshness_days)
    cdf = np.cumsum(weight)
    category_low = np.searchsorted(pop.item_category[available], np.arange(config.n_categories), side="left")
    category_high = np.searchsorted(pop.item_category[available], np.arange(config.n_categories), side="right")

    # Personal channel: a category from the user's current mix, then the best of a few candidates.
    use_drift_mix = rng.random(n_slots) < share
    mix_cdf = np.where(use_drift_mix[:, None], pop.user_drift_mix_cdf[slot_user], pop.user_mix_cdf[slot_user])
    category = np.minimum((mix_cdf < rng.random(n_slots)[:, None]).sum(axis=1), config.n_categories - 1)
    personal = (rng.random(n_slots) >= config.popularity_exposure) & (category_high[category] > category_low[category])
    before, after = pop.user_taste[slot_user], pop.user_drift_taste[slot_user]
    taste = before + np.float32(share) * (after - before)

    # Every slot gets a popularity draw (one vectorised draw) and personal slots then
    # replace it; a slot whose category has no items yet keeps the popular item.
    item = available[_draw_weighted(rng, cdf, np.zeros(n_slots, dtype=np.int64), np.full(n_slots, len(available)))]
    rows = np.flatnonzero(personal)
    m = config.retrieval_candidates
    low = np.repeat(category_low[category[rows]], m)
    high = np.repeat(category_high[category[rows]], m)
    candidates = available[_draw_weighted(rng, cdf, low, high)].reshape(len(rows), m)
    scores = np.einsum("rd,rmd->rm", taste[rows], pop.item_vectors[candidates])
    scores += config.ranking_noise * rng.standard_normal(scores.shape).astype(np.float32)
    item[rows] = candidates[np.arange(len(rows)), scores.argmax(axis=1)]

    # Times: sessions start uniformly over the day, slots follow every few seconds.
    gap_us = IMPRESSION_GAP_SECONDS * US_PER_SECOND
    session_start = (rng.random(len(session_user)) * (US_PER_DAY - gap_us * session_len)).astype(np.int64)
    timestamp_us = (
        day * US_PER_DAY + session_start[slot_session] + slot_pos * gap_us + rng.integers(0, gap_us, size=n_slots)
    )

    # A session shows an item once; a user is never shown two items in the same microsecond.
    _, keep = np.unique(slot_session * config.n_items + item, return_index=True)
    keep = np.sort(keep)
    time_in_day = timestamp_us[keep] - day * US_PER_DAY
    _, unique_time = np.unique(slot_user[keep] * US_PER_DAY + time_in_day, return_index=True)
    keep = keep[np.sort(unique_time)]
    slot_user, item, timestamp_us, taste = slot_user[keep], item[keep], timestamp_us[keep], taste[keep]

    match = config.affinity_weight * np.einsum("rd,rd->r", taste, pop.item_vectors[item]).astype(np.float64)
    logit = config.click_bias + pop.user_bias[slot_user] + config.quality_weight * pop.item_popularity[item] + match
    clicked = rng.random(len(item)) < _sigmoid(logit)
    noise = rng.standard_normal(len(item))
    log_dwell = np.log(config.dwell_median_seconds) + config.dwell_affinity_weight * match + config.dwell_sigma * noise
    dwell = np.where(clicked, np.exp(log_dwell), 0.0)

    order = np.argsort(timestamp_us, kind="stable")
    return _DayLog(slot_user[order], item[order], timestamp_us[order], clicked[order], dwell[order])


def _utc(start: dt.date, offset_us: np.ndarray) -> pd.DatetimeIndex:
    epoch_us = np.datetime64(start, "us")
    return pd.DatetimeIndex(epoch_us + offset_us.astype("timedelta64[us]")).tz_localize("UTC")


def _seeds(config: WorldConfig) -> list[np.random.SeedSequence]:
    return np.random.SeedSequence(config.seed).spawn(config.days + 1)


def _names(config: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    users = np.array([f"u{i}" for i in range(config.n_users)], dtype=object)
    items = np.array([f"i{i}" for i in range(config.n_items)], dtype=object)
    return users, items


def _ground_truth(config: WorldConfig, pop: _Population) -> GroundTruth:
    user_names, item_names = _names(config)
    return GroundTruth(
        config=config,
        user_ids=user_names,
        item_ids=item_names,
        user_taste=pop.user_taste,
        user_drift_taste=pop.user_drift_taste,
        user_bias=pop.user_bias,
        item_vectors=pop.item_vectors,
        item_popularity=pop.item_popularity,
    )


def world_ground_truth(config: WorldConfig) -> GroundTruth:
    """The oracle of the world ``config`` describes, without simulating its days.

    The same object :func:`generate_world` returns with the log (the
    population has its own random stream), at a fraction of the cost: the
    traffic simulator needs only the oracle of the world a model was trained on.
    """
    return _ground_truth(config, _draw_population(config, np.random.default_rng(_seeds(config)[0])))


def generate_world(config: WorldConfig) -> World:
    """Simulate the world described by ``config``; deterministic in ``config``."""
    # One random stream per day (and one for the population), so worlds that differ
    # only in drift are identical before drift starts: drift comparisons are paired.
    day_seeds = _seeds(config)
    pop = _draw_population(config, np.random.default_rng(day_seeds[0]))
    user_names, item_names = _names(config)

    logs = []
    for day in range(config.days):
        logs.append(_simulate_day(config, pop, day, np.random.default_rng(day_seeds[day + 1])))
        logger.debug("day %d/%d: %d impressions", day + 1, config.days, len(logs[-1].item))
    user = np.concatenate([log.user for log in logs])
    item = np.concatenate([log.item for log in logs])
    events = pd.DataFrame(
        {
            "event_id": np.array([f"e{i}" for i in range(len(user))], dtype=object),
            "user_id": user_names[user],
            "item_id": item_names[item],
            "event_timestamp": _utc(config.start_date, np.concatenate([log.timestamp_us for log in logs])),
            "clicked": np.concatenate([log.clicked for log in logs]),
            "dwell_seconds": np.concatenate([log.dwell_seconds for log in logs]),
            "rating": np.full(len(user), np.nan),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": item_names,
            "category": np.array([f"cat_{c:02d}" for c in pop.item_category], dtype=object),
            "created_at": _utc(config.start_date, pop.item_created_us),
            "title": np.array([f"item {i}" for i in range(config.n_items)], dtype=object),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": user_names,
            "signup_at": _utc(config.start_date, pop.user_signup_us),
            "segment": np.array(REGIONS, dtype=object)[pop.user_region],
            "age": pop.user_age,
        }
    )
    truth = _ground_truth(config, pop)
    logger.info(
        "generated world: %d users, %d items, %d days, %d events, CTR %.3f",
        config.n_users,
        config.n_items,
        config.days,
        len(events),
        float(events["clicked"].mean()) if len(events) else 0.0,
    )
    return World(events=events, items=items, users=users, ground_truth=truth)


def scale_name(config: WorldConfig) -> str:
    """The SCALES name whose config equals ``config``, else "custom"."""
    return next((name for name, scale in SCALES.items() if scale == config), "custom")


def write_world(config: WorldConfig, path: str | Path, overwrite: bool = False) -> Dataset:
    """Generate the world and write it as a dataset, ground truth in ``ground_truth/``."""
    world = generate_world(config)
    manifest = {
        "source": "world",
        "scale": scale_name(config),
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
    }
    return write_dataset(
        path,
        world.events,
        world.items,
        world.users,
        manifest=manifest,
        extra=lambda tmp: world.ground_truth.save(tmp / GROUND_TRUTH_DIR),
        overwrite=overwrite,
    )
