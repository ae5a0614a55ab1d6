"""Training sets: labels from the event log joined point-in-time with a feature service.

Labels: every click is a positive. Negatives are either items drawn at random
from the catalogue that the user never interacted with (``random``, the
default: what a retrieval model needs, since it must rank the whole catalogue,
and the only choice for logs without impressions such as MovieLens ratings),
or the impressions the user did not click (``impressions``, downsampled to a
fixed ratio; what a ranker over logged exposures learns from). On the demo
world, random negatives gave NDCG@10 0.099 against 0.025 for impression
negatives: exposure negatives teach "clicked given shown", not "worth showing".

Features come only from ``store.get_historical_features(features=<service>)``:
the feature service is the contract serving reads too. Feast has been seen to
drop entity rows silently (the dask offline store drops an entity row that has
no feature row within ``[t - ttl, t]``, e.g. one stamped before the entity's
first snapshot), so the row count is checked and a mismatch fails loudly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from recflow.data.schema import UNKNOWN

log = logging.getLogger(__name__)

LABEL_COLUMNS = ["user_id", "item_id", "event_timestamp", "label"]


class TrainingSetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    feature_service: str = Field("retrieval_v1", description="Feast feature service training and serving share")
    negatives: Literal["random", "impressions"] = Field(
        "random", description="random catalogue items the user never touched, or unclicked impressions"
    )
    negatives_per_positive: float = Field(4.0, gt=0, description="Negatives kept or drawn per positive")
    seed: int = 42


class RowsVanished(RuntimeError):
    """Feast returned fewer (or more) rows than the entity frame it was given."""


def build_labels(train: pd.DataFrame, catalog: np.ndarray, config: TrainingSetConfig) -> pd.DataFrame:
    """Positive and negative label rows from the training split of the event log."""
    rng = np.random.default_rng(config.seed)
    positives = train.loc[train["clicked"], ["user_id", "item_id", "event_timestamp"]]
    unclicked = train.loc[~train["clicked"], ["user_id", "item_id", "event_timestamp"]]
    if positives.empty:
        raise ValueError("the training split has no positive (clicked) events to learn from")
    wanted = int(round(len(positives) * config.negatives_per_positive))
    if config.negatives == "impressions":
        if unclicked.empty:
            raise ValueError("negatives='impressions' but the log has no unclicked impressions")
        keep = rng.choice(len(unclicked), size=min(wanted, len(unclicked)), replace=False)
        negatives = unclicked.iloc[np.sort(keep)]
    else:
        negatives = _random_negatives(positives, train, catalog, wanted, rng)
    labels = pd.concat(
        [positives.assign(label=1.0), negatives.assign(label=0.0)], ignore_index=True
    ).sort_values("event_timestamp", kind="stable", ignore_index=True)
    log.info("labels: %d positives, %d negatives (%s)", len(positives), len(negatives), config.negatives)
    return labels[LABEL_COLUMNS]


def _random_negatives(
    positives: pd.DataFrame, train: pd.DataFrame, catalog: np.ndarray, wanted: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Catalogue items the user never interacted with, stamped like a random positive of theirs."""
    anchors = positives.iloc[rng.integers(0, len(positives), size=wanted)]
    items = catalog[rng.integers(0, len(catalog), size=wanted)]
    seen = pd.MultiIndex.from_frame(train[["user_id", "item_id"]])
    candidate = pd.MultiIndex.from_arrays([anchors["user_id"].to_numpy(), items])
    fresh = ~candidate.isin(seen)
    return pd.DataFrame(
        {
            "user_id": anchors["user_id"].to_numpy()[fresh],
            "item_id": items[fresh],
            "event_timestamp": anchors["event_timestamp"].to_numpy()[fresh],
        }
    )


def service_features(store, service_name: str) -> dict[str, str]:
    """Feature name -> Feast type name for every feature of a feature service."""
    service = store.get_feature_service(service_name)
    return {
        field.name: str(field.dtype)
        for projection in service.feature_view_projections
        for field in projection.features
    }


# Absent values that are not 0 / "unknown" / []: the profile table writes -1
# for an unknown age, so a missing profile row must read the same.
FEATURE_DEFAULTS = {"user_age": -1}


def fill_missing(frame: pd.DataFrame, features: dict[str, str]) -> pd.DataFrame:
    """The one defaulting rule for absent feature values, offline and online.

    An entity with no row yet (a new user, an item never shown) gets
    ``FEATURE_DEFAULTS`` where listed, else zeros for numbers, ``"unknown"``
    for strings and an empty list for histories.
    """
    columns = {name: frame[name] for name in frame.columns}
    for name, dtype in features.items():
        if name not in columns:
            continue
        values = columns[name]
        if pd.api.types.is_numeric_dtype(values.dtype) and not values.hasnans:
            continue  # nothing absent: the common case online, where a frame is a few users
        if name in FEATURE_DEFAULTS:
            columns[name] = pd.to_numeric(values).fillna(FEATURE_DEFAULTS[name])
        elif dtype.startswith("Array"):
            columns[name] = pd.Series(
                [list(v) if isinstance(v, (list, np.ndarray)) else [] for v in values], index=frame.index, dtype=object
            )
        elif "String" in dtype:
            columns[name] = values.fillna(UNKNOWN).astype(str)
        else:
            columns[name] = pd.to_numeric(values).fillna(0)
    # One frame built from the columns, not one column assignment after another:
    # the model server fills a frame of a few users per request, where each
    # assignment's overhead would cost more than the values.
    return pd.DataFrame(columns, index=frame.index)


def join_features(store, entity_rows: pd.DataFrame, service_name: str) -> pd.DataFrame:
    """Point-in-time join of ``entity_rows`` with a feature service, row count checked.

    The rows come back in the offline store's order, not the input's; extra
    columns of ``entity_rows`` (labels, row ids) are carried through.
    """
    service = store.get_feature_service(service_name)
    joined = store.get_historical_features(entity_df=entity_rows, features=service).to_df()
    if len(joined) != len(entity_rows):
        raise RowsVanished(
            f"Feast returned {len(joined)} rows for {len(entity_rows)} entity rows "
            f"(feature service {service_name!r}): rows vanished in the point-in-time join; "
            "check the feature views' TTLs and the entity timestamps"
        )
    return fill_missing(joined, service_features(store, service_name))


def build_training_set(store, train: pd.DataFrame, catalog: np.ndarray, config: TrainingSetConfig) -> pd.DataFrame:
    labels = build_labels(train, catalog, config)
    joined = join_features(store, labels, config.feature_service)
    return joined.sort_values(["event_timestamp", "user_id", "item_id"], kind="stable", ignore_index=True)


def entity_feature_refs(store, service_name: str, entity: str) -> list[str]:
    """``view:feature`` references of the service's features keyed by ``entity`` alone.

    Online, serving reads only the user side this way (items come from the
    bundle's snapshot); offline, evaluation reads each side as of an instant.
    On-demand views, which need both entities, are left out.
    """
    service = store.get_feature_service(service_name)
    views = {view.name: view for view in store.list_feature_views()}
    return [
        f"{projection.name_to_use()}:{field.name}"
        for projection in service.feature_view_projections
        if projection.name in views and entity in views[projection.name].entities
        for field in projection.features
    ]


def entity_features_as_of(store, service_name: str, entity: str, ids: list[str], at: pd.Timestamp) -> pd.DataFrame:
    """One entity's features from a service, as they were at instant ``at``.

    Evaluation reads the user and item sides separately (every user and every
    catalogue item at the split instant), the way serving reads user features
    online and items from a snapshot. The references come from the feature
    service, so the contract is the same one training used. On-demand views
    that combine both entities are computed where the two sides meet.
    """
    refs = entity_feature_refs(store, service_name, entity)
    key = f"{entity}_id"
    rows = pd.DataFrame({key: list(ids), "event_timestamp": at})
    joined = store.get_historical_features(entity_df=rows, features=refs).to_df()
    if len(joined) != len(rows):
        raise RowsVanished(f"Feast returned {len(joined)} rows for {len(rows)} {entity}s as of {at}")
    features = {name: dtype for name, dtype in service_features(store, service_name).items() if name in joined}
    ordered = joined.set_index(key).loc[list(ids)].reset_index()
    return fill_missing(ordered, features).drop(columns=["event_timestamp"])


@dataclass(frozen=True)
class OnDemandTransform:
    """One on-demand feature view of a service: its transformation and the entities its inputs are keyed by.

    ``entities`` holds the entities of its source feature views, plus
    ``"request"`` when it reads request data (``"on_demand"`` when a source
    is another on-demand view). A transform of one entity's
    features alone (``side``) gives each entity the same output in every row
    it appears in, so where serving joins users with candidates it is
    computed once per user or per snapshot item instead of once per pair.
    """

    name: str
    function: Callable[[pd.DataFrame], pd.DataFrame]
    entities: frozenset[str]

    @property
    def side(self) -> str | None:
        """The one entity whose features the transform reads, or None if it reads more."""
        return next(iter(self.entities)) if len(self.entities) == 1 else None

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.function(frame)


def on_demand_transforms(store, service_name: str) -> list[OnDemandTransform]:
    """The service's on-demand feature transformations, in the service's order.

    Offline, Feast computes them inside the point-in-time join; where user and
    item features meet outside Feast (the ranking stage scoring candidates from
    the item snapshot), the same registered transformations are applied.
    """
    service = store.get_feature_service(service_name)
    on_demand = {view.name: view for view in store.list_on_demand_feature_views()}
    views = {view.name: view for view in store.list_feature_views()}
    transforms = []
    for projection in service.feature_view_projections:
        if projection.name not in on_demand:
            continue
        view = on_demand[projection.name]
        entities = set()
        for source in view.source_feature_view_projections.values():
            # Another on-demand view as a source: its inputs are not traced, so this one counts as joint.
            entities.update(views[source.name].entities if source.name in views else ["on_demand"])
        if view.source_request_sources:
            entities.add("request")
        transforms.append(OnDemandTransform(view.name, view.feature_transformation.transform, frozenset(entities)))
    return transforms
