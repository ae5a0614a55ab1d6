"""The canonical schema every data source is converted into.

One row of the event log is one exposure of an item to a user and its outcome:
a synthetic impression (clicked or not, with dwell time) or an explicit
MovieLens rating (always a positive interaction, with its rating). Everything
downstream (validation, features, labels, evaluation) reads only these columns.
"""

from __future__ import annotations

import pyarrow as pa

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("clicked", pa.bool_(), nullable=False),
        pa.field("dwell_seconds", pa.float64(), nullable=False),
        # Explicit feedback (MovieLens stars); null where the source has none.
        pa.field("rating", pa.float64(), nullable=True),
    ]
)

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("title", pa.string(), nullable=True),
    ]
)

USERS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("signup_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # A coarse profile attribute: a region in the synthetic world, the
        # occupation in MovieLens-100k, "unknown" where the source has none.
        pa.field("segment", pa.string(), nullable=False),
        pa.field("age", pa.int32(), nullable=True),
    ]
)

UNKNOWN = "unknown"

# Ratings in every supported MovieLens release lie in [0.5, 5].
RATING_RANGE = (0.5, 5.0)
