"""Validation of raw canonical tables, before anything is written or trained.

Every data source (MovieLens files, the synthetic world, a user's parquet) is
first mapped to the canonical column names of :mod:`recflow.data.schema`, but
its values may still be of the wrong type: strings read from CSV, integers,
wrong dtypes from a corrupted parquet. :func:`validate_dataset` is the single
gate between such "raw canonical" frames and everything downstream: a bad
input fails the run here, with a report that names the rows and the columns at
fault, and the typed canonical frames are handed out only when the report is
clean, so nothing is ever written from a bad input.

All checks are vectorised (numpy/pandas): rows are never iterated in Python,
so validating millions of events takes seconds.

Row numbers in reports are 0-based positions in the frame as given (not index
labels), so a frame read straight from a file maps row N to its N-th data line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recflow.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, RATING_RANGE, USERS_SCHEMA

SCHEMAS = {"events": EVENTS_SCHEMA, "items": ITEMS_SCHEMA, "users": USERS_SCHEMA}

MAX_ROWS_LISTED = 10
MAX_EXAMPLES = 3
AGE_RANGE = (0, 120)
# Events may be stamped slightly ahead of the validating clock (clock skew,
# time zones); anything further ahead is a corrupted timestamp.
FUTURE_TOLERANCE = pd.Timedelta(days=1)
EPOCH = np.datetime64("1970-01-01T00:00:00", "us")
# datetime64[us] spans about +-290,000 years; epoch seconds beyond that cannot be represented.
MAX_EPOCH_SECONDS = 9.2e12
BOOL_WORDS = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}
# An explicit UTC offset after a time of day. Strings with and without one are parsed
# separately: pandas' ISO-8601 parser applies the offset of an earlier string to the
# naive strings that follow it.
UTC_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)\s*$"
TYPE_EXPECTATIONS = {
    "timestamp": "have a value that is not a timestamp (expected a datetime, epoch seconds or an ISO-8601 string)",
    "bool": "have a value that is not a boolean (expected true/false or 1/0)",
    "float": "have a value that is not a number",
    "int": "have a value that is not a whole number",
}
DUPLICATE_EVENT_KEY = ("user_id", "item_id", "event_timestamp")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one column (or table), with the first rows at fault.

    ``count`` is the number of offending rows (for a missing or unexpected
    column: the table's row count); ``rows`` lists the first of them as 0-based
    positions; ``examples`` are repr'd offending values.
    """

    table: str
    column: str | None
    rule: str
    count: int
    rows: tuple[int, ...]
    examples: tuple[str, ...]
    message: str


class CleanTables(NamedTuple):
    """The three tables cast exactly to the canonical schemas, in schema column order."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame


@dataclass
class ValidationReport:
    problems: list[Problem]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_markdown(self) -> str:
        """A table of problems for a run summary, or one success line with the row counts."""
        sizes = ", ".join(f"{count} {table}" for table, count in self.counts.items())
        if self.ok:
            return f"Data validation passed: {sizes}."
        lines = [
            f"**Data validation failed**: {len(self.problems)} problem(s) in {sizes}.",
            "",
            "| table | column | rule | count | rows | examples |",
            "|---|---|---|---|---|---|",
        ]
        for p in self.problems:
            cells = [p.table, p.column or "", p.rule, str(p.count), ", ".join(map(str, p.rows)), ", ".join(p.examples)]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "counts": dict(self.counts),
            "problems": [{**asdict(p), "rows": list(p.rows), "examples": list(p.examples)} for p in self.problems],
        }

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise DataValidationError(self)


class DataValidationError(ValueError):
    """Raised for an invalid input; ``report`` holds every problem found."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        details = "\n".join(f"  - {p.message}" for p in report.problems)
        super().__init__(f"data validation failed with {len(report.problems)} problem(s):\n{details}")


class Column(NamedTuple):
    """A column converted for checking: values (NaN/NaT/None where null or invalid) and masks."""

    values: np.ndarray
    null: np.ndarray
    invalid: np.ndarray


def validate_dataset(
    events: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    now: pd.Timestamp | None = None,
) -> tuple[ValidationReport, CleanTables | None]:
    """Check raw canonical tables; return the report and, only if it is ok, the typed tables.

    ``now`` bounds timestamps from above (default: the current time); tests and
    backfills pass it explicitly.
    """
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    now = now.tz_localize("UTC") if now.tz is None else now.tz_convert("UTC")
    latest = np.datetime64((now + FUTURE_TOLERANCE).tz_localize(None), "us")

    raw = {"events": events, "items": items, "users": users}
    problems: list[Problem] = []
    columns: dict[str, dict[str, Column]] = {}
    for table, frame in raw.items():
        _check_schema(problems, table, frame)
        columns[table] = _convert_table(problems, table, frame)
    if len(events) == 0:
        message = "events: the table is empty, so there is nothing to train on."
        problems.append(Problem("events", None, "empty_table", 0, (), (), message))
    _check_ranges(problems, raw, columns, latest)
    _check_duplicates(problems, raw, columns)
    _check_references(problems, raw, columns)

    report = ValidationReport(problems, {table: len(frame) for table, frame in raw.items()})
    if not report.ok:
        return report, None
    clean = {table: _finalize(columns[table], SCHEMAS[table]) for table in raw}
    return report, CleanTables(**clean)


# --- problems -----------------------------------------------------------------------


def _agree(what: str, count: int) -> str:
    """Make a plural predicate ("are ...", "have ...") agree with a single row."""
    if count == 1:
        for plural, singular in (("are ", "is "), ("have ", "has ")):
            if what.startswith(plural):
                return singular + what[len(plural) :]
    return what


def _examples(raw: pd.Series | pd.DataFrame, rows: np.ndarray) -> tuple[str, ...]:
    """The first distinct offending values among the listed rows, repr'd."""
    picked = raw.iloc[rows]
    values = picked.itertuples(index=False, name=None) if isinstance(raw, pd.DataFrame) else picked.tolist()
    return tuple(dict.fromkeys(repr(v) for v in values))[:MAX_EXAMPLES]


def _flag(
    problems: list[Problem],
    table: str,
    column: str,
    rule: str,
    mask: np.ndarray,
    raw: pd.Series | pd.DataFrame,
    what: str,
) -> None:
    """Record a problem for the rows where ``mask`` is true, if any."""
    positions = np.flatnonzero(mask)
    if positions.size == 0:
        return
    listed = positions[:MAX_ROWS_LISTED]
    examples = _examples(raw, listed)
    count = int(positions.size)
    rows_text = ", ".join(map(str, listed)) + (", ..." if count > listed.size else "")
    noun = "row" if count == 1 else "rows"
    where = f"{noun} {rows_text}; e.g. {', '.join(examples)}"
    message = f"{table}.{column}: {count} {noun} {_agree(what, count)} ({where})."
    problems.append(Problem(table, column, rule, count, tuple(int(r) for r in listed), examples, message))


# --- schema and types -----------------------------------------------------------------


def _check_schema(problems: list[Problem], table: str, frame: pd.DataFrame) -> None:
    expected = SCHEMAS[table].names
    present = [str(c) for c in frame.columns]
    for name in expected:
        if name not in present:
            problems.append(
                Problem(
                    table, name, "missing_column", len(frame), (), (),
                    f"{table}.{name}: the required column is missing "
                    f"(the table has: {', '.join(present) or 'no columns'}).",
                )
            )
    for name in dict.fromkeys(present):
        if name not in expected:
            problems.append(
                Problem(
                    table, name, "unexpected_column", len(frame), (), (),
                    f"{table}.{name}: unexpected column; the canonical {table} columns are {', '.join(expected)}.",
                )
            )
        elif present.count(name) > 1:
            problems.append(
                Problem(
                    table, name, "duplicate_column", len(frame), (), (),
                    f"{table}.{name}: the column appears {present.count(name)} times.",
                )
            )


def _kind(data_type: pa.DataType) -> str:
    if pa.types.is_string(data_type):
        return "string"
    if pa.types.is_timestamp(data_type):
        return "timestamp"
    if pa.types.is_boolean(data_type):
        return "bool"
    if pa.types.is_floating(data_type):
        return "float"
    if pa.types.is_integer(data_type):
        return "int"
    raise TypeError(f"no validation for schema type {data_type}")


def _convert_table(problems: list[Problem], table: str, frame: pd.DataFrame) -> dict[str, Column]:
    """Convert every present canonical column; flag values that do not convert and required nulls."""
    names = [str(c) for c in frame.columns]
    converted = {}
    for field in SCHEMAS[table]:
        if names.count(field.name) != 1:
            continue
        raw = frame.iloc[:, names.index(field.name)]
        kind = _kind(field.type)
        column = CONVERTERS[kind](raw)
        if kind != "string":
            _flag(problems, table, field.name, "type", column.invalid, raw, TYPE_EXPECTATIONS[kind])
        if not field.nullable:
            _flag(problems, table, field.name, "null", column.null, raw, "are null or empty")
        converted[field.name] = column
    return converted


def _is_text(raw: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_datetime64_any_dtype(raw.dtype))


def _arrow(values: np.ndarray) -> pa.Array:
    """Strings (None for null) as an Arrow array: its string kernels run in C, where
    pandas' ``.str`` methods make one Python call per row."""
    return pa.array(values, type=pa.string(), from_pandas=True)


def _strings(raw: pd.Series) -> Column:
    """Values as str; null, NaN and blank strings are null. Anything converts to a string."""
    null = raw.isna().to_numpy()
    text = raw if pd.api.types.infer_dtype(raw, skipna=True) == "string" else raw.astype(str)
    values = text.to_numpy(dtype=object, copy=True)
    values[null] = None
    trimmed = pc.utf8_trim_whitespace(_arrow(values))
    null |= pc.equal(trimmed, "").fill_null(False).to_numpy(zero_copy_only=False)
    values[null] = None
    return Column(values, null, np.zeros(len(raw), dtype=bool))


def _from_epoch_seconds(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """datetime64[us] from epoch seconds, and the mask of numbers no timestamp can hold."""
    representable = np.isfinite(seconds) & (np.abs(seconds) < MAX_EPOCH_SECONDS)
    micros = np.round(np.where(representable, seconds, 0.0) * 1e6).astype(np.int64)
    values = micros.astype("datetime64[us]")
    values[~representable] = np.datetime64("NaT")
    return values, ~representable & ~np.isnan(seconds)


def _parse_iso(text: pd.Series) -> np.ndarray:
    """datetime64[us] (UTC, NaT where unparseable) from ISO-8601 strings; naive strings are UTC."""
    values = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[us]")
    with_offset = text.str.contains(UTC_OFFSET, regex=True).to_numpy()
    for group in (with_offset, ~with_offset):
        if group.any():
            parsed = pd.to_datetime(text[group], utc=True, format="ISO8601", errors="coerce")
            values[group] = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    return values


def _timestamps(raw: pd.Series) -> Column:
    """UTC instants (as naive datetime64[us]) from datetimes, epoch seconds or ISO-8601 strings."""
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        utc = raw.dt.tz_convert("UTC").dt.tz_localize(None) if raw.dt.tz is not None else raw
        null = raw.isna().to_numpy()
        return Column(utc.to_numpy(dtype="datetime64[us]"), null, np.zeros(len(raw), dtype=bool))
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        seconds = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        values, invalid = _from_epoch_seconds(seconds)
        return Column(values, np.isnan(seconds), invalid)
    strings = _strings(raw)
    text = pd.Series(strings.values, dtype=object)
    seconds = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    values, invalid = _from_epoch_seconds(seconds)
    iso = ~strings.null & np.isnan(seconds)
    if iso.any():
        values[iso] = _parse_iso(text[iso].str.strip())
        invalid |= iso & np.isnat(values)
    return Column(values, strings.null, invalid)


def _bools(raw: pd.Series) -> Column:
    """1.0/0.0 (NaN where null or invalid) from bools, 0/1, or "true"/"false" strings."""
    if not _is_text(raw):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        null = np.isnan(values)
        invalid = ~null & ~np.isin(values, (0.0, 1.0))
        values[invalid] = np.nan
        return Column(values, null, invalid)
    strings = _strings(raw)
    words = pc.utf8_lower(pc.utf8_trim_whitespace(_arrow(strings.values)))
    known = pc.index_in(words, value_set=pa.array(list(BOOL_WORDS))).to_numpy(zero_copy_only=False)
    found = ~np.isnan(known)
    values = np.full(len(raw), np.nan)
    values[found] = np.array(list(BOOL_WORDS.values()))[known[found].astype(np.int64)]
    return Column(values, strings.null, ~strings.null & ~found)


def _floats(raw: pd.Series) -> Column:
    """float64 (NaN where null or invalid) from numbers or numeric strings."""
    if not _is_text(raw):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        return Column(values, np.isnan(values), np.zeros(len(raw), dtype=bool))
    strings = _strings(raw)
    values = pd.to_numeric(pd.Series(strings.values, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    return Column(values, strings.null, ~strings.null & np.isnan(values))


def _ints(raw: pd.Series) -> Column:
    """Whole numbers, kept as float64 until the final cast so range checks see any magnitude."""
    column = _floats(raw)
    fractional = ~column.null & ~column.invalid & (column.values != np.round(column.values))
    values = np.where(fractional, np.nan, column.values)
    return Column(values, column.null, column.invalid | fractional)


CONVERTERS = {"string": _strings, "timestamp": _timestamps, "bool": _bools, "float": _floats, "int": _ints}


def _finalize(columns: dict[str, Column], schema: pa.Schema) -> pd.DataFrame:
    """The exact canonical dtypes: object str, datetime64[us, UTC], bool, float64, Int32."""
    out = {}
    for field in schema:
        values = columns[field.name].values
        kind = _kind(field.type)
        if kind == "timestamp":
            out[field.name] = pd.Series(values).dt.tz_localize("UTC")
        elif kind == "bool":
            out[field.name] = pd.Series(values.astype(bool))
        elif kind == "int":
            out[field.name] = pd.Series(values).astype("Int32")
        else:
            out[field.name] = pd.Series(values, dtype=object if kind == "string" else np.float64)
    return pd.DataFrame(out)


# --- value checks -----------------------------------------------------------------------


def _check_ranges(
    problems: list[Problem],
    raw: dict[str, pd.DataFrame],
    columns: dict[str, dict[str, Column]],
    latest: np.datetime64,
) -> None:
    for table, name in (("events", "event_timestamp"), ("items", "created_at"), ("users", "signup_at")):
        if name in columns[table]:
            values = columns[table][name].values
            source = raw[table][name]
            _flag(problems, table, name, "negative_timestamp", values <= EPOCH, source,
                  "have a timestamp at or before 1970-01-01 (zero or negative epoch seconds)")
            _flag(problems, table, name, "future_timestamp", values > latest, source,
                  f"have a timestamp later than {pd.Timestamp(latest).isoformat()} UTC (more than a day ahead)")

    events = columns["events"]
    if "dwell_seconds" in events:
        dwell = events["dwell_seconds"].values
        _flag(problems, "events", "dwell_seconds", "dwell_out_of_range", (dwell < 0) | np.isinf(dwell),
              raw["events"]["dwell_seconds"], "have a negative or infinite dwell time")
        if "clicked" in events:
            lingered = (events["clicked"].values == 0.0) & (dwell != 0.0) & ~np.isnan(dwell)
            _flag(problems, "events", "dwell_seconds", "dwell_without_click", lingered,
                  raw["events"][["clicked", "dwell_seconds"]], "have a nonzero dwell time without a click")
    if "rating" in events:
        low, high = RATING_RANGE
        rating = events["rating"].values
        _flag(problems, "events", "rating", "rating_out_of_range", (rating < low) | (rating > high),
              raw["events"]["rating"], f"have a rating outside [{low}, {high}]")
    if "age" in columns["users"]:
        low, high = AGE_RANGE
        age = columns["users"]["age"].values
        _flag(problems, "users", "age", "age_out_of_range", (age < low) | (age > high),
              raw["users"]["age"], f"have an age outside [{low}, {high}]")


def _repeated(column: Column) -> np.ndarray:
    """Rows whose (valid) value occurs more than once: every occurrence, the first included.

    Arrow's hash kernel is about twice as fast as pandas' on millions of strings.
    """
    values = pa.array(column.values, from_pandas=True)
    codes = pc.dictionary_encode(values, null_encoding="encode").indices.to_numpy()
    repeated = np.bincount(codes, minlength=1)[codes] > 1
    return repeated & ~column.null & ~column.invalid


def _repeated_events(events: dict[str, Column]) -> np.ndarray:
    """Rows whose (user_id, item_id, event_timestamp) occurs more than once.

    A repeated triple needs a repeated timestamp, and timestamps hash cheaply, so
    only the rows sharing a timestamp are compared on all three columns.
    """
    candidates = _repeated(events["event_timestamp"])
    for name in DUPLICATE_EVENT_KEY:
        candidates &= ~events[name].null & ~events[name].invalid
    key = pd.DataFrame({name: events[name].values[candidates] for name in DUPLICATE_EVENT_KEY})
    repeated = np.zeros(len(candidates), dtype=bool)
    repeated[candidates] = key.duplicated(keep=False).to_numpy()
    return repeated


def _check_duplicates(
    problems: list[Problem], raw: dict[str, pd.DataFrame], columns: dict[str, dict[str, Column]]
) -> None:
    for table, name in (("events", "event_id"), ("items", "item_id"), ("users", "user_id")):
        if name in columns[table]:
            _flag(problems, table, name, f"duplicate_{name}", _repeated(columns[table][name]), raw[table][name],
                  f"share their {name} with another row")
    if all(name in columns["events"] for name in DUPLICATE_EVENT_KEY):
        _flag(problems, "events", f"({', '.join(DUPLICATE_EVENT_KEY)})", "duplicate_event",
              _repeated_events(columns["events"]), raw["events"][list(DUPLICATE_EVENT_KEY)],
              "repeat the user, item and timestamp of another row")


def _lookup(keys: np.ndarray, table_keys: np.ndarray) -> np.ndarray:
    """For each key, the position of its first occurrence in table_keys (-1 where absent or null)."""
    index = pd.Index(table_keys)
    first = ~index.duplicated() & ~index.isna()
    positions = np.flatnonzero(first)
    found = pd.Index(table_keys[positions]).get_indexer(keys)
    rows = np.full(len(keys), -1)
    hit = found >= 0
    rows[hit] = positions[found[hit]]
    return rows


def _check_references(
    problems: list[Problem], raw: dict[str, pd.DataFrame], columns: dict[str, dict[str, Column]]
) -> None:
    events = columns["events"]
    if "user_id" in events and "user_id" in columns["users"]:
        user_ids = events["user_id"]
        unknown = (_lookup(user_ids.values, columns["users"]["user_id"].values) < 0) & ~user_ids.null
        _flag(problems, "events", "user_id", "unknown_user", unknown, raw["events"]["user_id"],
              "have a user_id that is not in users")
    if "item_id" in events and "item_id" in columns["items"]:
        item_ids = events["item_id"]
        item_row = _lookup(item_ids.values, columns["items"]["item_id"].values)
        _flag(problems, "events", "item_id", "unknown_item", (item_row < 0) & ~item_ids.null,
              raw["events"]["item_id"], "have an item_id that is not in items")
        if "event_timestamp" in events and "created_at" in columns["items"]:
            known = item_row >= 0
            created = np.full(len(item_row), np.datetime64("NaT"), dtype="datetime64[us]")
            created[known] = columns["items"]["created_at"].values[item_row[known]]
            _flag(problems, "events", "event_timestamp", "event_before_item_created",
                  events["event_timestamp"].values < created, raw["events"][["item_id", "event_timestamp"]],
                  "have a timestamp earlier than their item's created_at in items")
