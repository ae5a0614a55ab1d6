"""validate_dataset: each corruption names its column and exact rows; clean data is typed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recflow.data.dataset import to_table
from recflow.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA
from recflow.data.validation import DataValidationError, Problem, ValidationReport, validate_dataset

NOW = pd.Timestamp("2024-01-01", tz="UTC")
T0 = 1_600_000_000  # 2020-09-13


def raw_tables() -> dict[str, pd.DataFrame]:
    """Clean raw canonical frames, every value a string as read from a CSV file."""
    events = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(6)],
            "user_id": ["u1", "u1", "u2", "u2", "u3", "u3"],
            "item_id": ["i1", "i2", "i1", "i3", "i2", "i3"],
            "event_timestamp": [str(T0 + 60 * i) for i in range(6)],
            "clicked": ["true", "false", "1", "0", "True", "false"],
            "dwell_seconds": ["12.5", "0", "3", "0.0", "40", "0"],
            "rating": ["4", None, "", "0.5", "5", None],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3"],
            "category": ["drama", "comedy", "drama"],
            "created_at": [str(T0 - 86_400)] * 3,
            "title": ["One", None, "Three"],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "signup_at": ["2019-01-01T00:00:00Z", "2019-06-01 12:00", "2019-07-01T02:00:00+02:00"],
            "segment": ["eu", "us", "unknown"],
            "age": ["30", "", "61"],
        }
    )
    return {"events": events, "items": items, "users": users}


def validate(tables: dict[str, pd.DataFrame]):
    return validate_dataset(tables["events"], tables["items"], tables["users"], now=NOW)


def problems_of(report: ValidationReport, rule: str) -> list[Problem]:
    return [p for p in report.problems if p.rule == rule]


def only_problem(report: ValidationReport, rule: str) -> Problem:
    found = problems_of(report, rule)
    assert len(found) == 1, report.to_markdown()
    return found[0]


def test_clean_data_passes_and_is_cast_to_canonical_dtypes():
    report, clean = validate(raw_tables())

    assert report.ok, report.to_markdown()
    assert report.counts == {"events": 6, "items": 3, "users": 3}
    assert list(clean.events.columns) == EVENTS_SCHEMA.names
    assert list(clean.items.columns) == ITEMS_SCHEMA.names
    assert list(clean.users.columns) == USERS_SCHEMA.names
    assert str(clean.events["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert clean.events["clicked"].dtype == bool
    assert clean.events["dwell_seconds"].dtype == np.float64
    assert clean.events["rating"].dtype == np.float64
    assert str(clean.users["age"].dtype) == "Int32"
    assert clean.events["clicked"].tolist() == [True, False, True, False, True, False]
    assert clean.events["rating"].isna().tolist() == [False, True, True, False, False, True]
    assert clean.events["event_timestamp"].iloc[1] == pd.Timestamp(T0 + 60, unit="s", tz="UTC")
    assert clean.users["signup_at"].tolist() == [
        pd.Timestamp("2019-01-01T00:00:00Z"),
        pd.Timestamp("2019-06-01T12:00:00Z"),
        pd.Timestamp("2019-07-01T00:00:00Z"),
    ]
    assert clean.users["age"].tolist()[0] == 30 and clean.users["age"].isna().tolist() == [False, True, False]
    assert clean.items["title"].tolist() == ["One", None, "Three"]
    # Exactly the canonical Arrow types: writing needs no further conversion.
    to_table(clean.events, EVENTS_SCHEMA)
    to_table(clean.items, ITEMS_SCHEMA)
    to_table(clean.users, USERS_SCHEMA)
    assert report.to_markdown() == "Data validation passed: 6 events, 3 items, 3 users."
    report.raise_if_failed()


def test_typed_frames_from_parquet_pass_and_ids_become_strings():
    tables = raw_tables()
    events = tables["events"]
    tables["events"] = events.assign(
        user_id=[1, 1, 2, 2, 3, 3],
        event_timestamp=pd.to_datetime(events["event_timestamp"].astype(int), unit="s"),
        clicked=[True, False, True, False, True, False],
        dwell_seconds=[12.5, 0.0, 3.0, 0.0, 40.0, 0.0],
        rating=[4.0, np.nan, np.nan, 0.5, 5.0, np.nan],
    )
    tables["users"] = tables["users"].assign(user_id=[1, 2, 3], age=pd.array([30, None, 61], dtype="Int64"))

    report, clean = validate(tables)

    assert report.ok, report.to_markdown()
    assert clean.events["user_id"].tolist() == ["1", "1", "2", "2", "3", "3"]
    assert clean.events["event_timestamp"].iloc[0] == pd.Timestamp(T0, unit="s", tz="UTC")


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(pd.to_datetime([T0, T0 + 1.5], unit="s")),  # naive datetime64 = UTC
        pd.Series(pd.to_datetime([T0, T0 + 1.5], unit="s", utc=True).tz_convert("Asia/Tokyo")),
        pd.Series([float(T0), T0 + 1.5]),
        pd.Series([str(T0), str(T0 + 1.5)]),
        pd.Series(["2020-09-13T12:26:40Z", "2020-09-13 14:26:41.5+02:00"]),
        pd.Series(["2020-09-13T12:26:40", "2020-09-13T12:26:41.500"]),
        pd.Series([T0, "2020-09-13T12:26:41.500000+00:00"], dtype=object),
    ],
)
def test_timestamp_forms_all_read_as_utc(values):
    tables = raw_tables()
    tables["events"] = tables["events"].iloc[:2].assign(event_timestamp=values.to_numpy())

    report, clean = validate(tables)

    assert report.ok, report.to_markdown()
    expected = [pd.Timestamp(T0, unit="s", tz="UTC"), pd.Timestamp(T0 + 1.5, unit="s", tz="UTC")]
    assert clean.events["event_timestamp"].tolist() == expected


def test_naive_iso_strings_are_not_shifted_by_an_earlier_offset():
    tables = raw_tables()
    tables["events"] = tables["events"].iloc[:2].assign(
        event_timestamp=["2020-09-13T14:00:00+02:00", "2020-09-13T14:00:00"]
    )

    report, clean = validate(tables)

    assert report.ok, report.to_markdown()
    assert clean.events["event_timestamp"].dt.hour.tolist() == [12, 14]


def test_non_timestamp_value_names_column_and_row():
    tables = raw_tables()
    tables["events"].loc[2, "event_timestamp"] = "abc"

    report, clean = validate(tables)

    assert clean is None and not report.ok
    problem = only_problem(report, "type")
    assert (problem.table, problem.column, problem.count, problem.rows) == ("events", "event_timestamp", 1, (2,))
    assert problem.examples == ("'abc'",)
    assert "events.event_timestamp" in problem.message and "row 2" in problem.message


@pytest.mark.parametrize(
    "table, column, bad_value",
    [
        ("events", "clicked", "yes"),
        ("events", "dwell_seconds", "long"),
        ("events", "rating", "x"),
        ("users", "age", "30.5"),
        ("users", "signup_at", "last tuesday"),
        ("items", "created_at", "2020-13-45"),
    ],
)
def test_values_that_do_not_convert_are_type_problems(table, column, bad_value):
    tables = raw_tables()
    tables[table].loc[1, column] = bad_value

    report, _ = validate(tables)

    problem = only_problem(report, "type")
    assert (problem.table, problem.column, problem.rows) == (table, column, (1,))
    assert problem.examples == (repr(bad_value),)


def test_negative_and_zero_timestamps():
    tables = raw_tables()
    tables["events"].loc[[1, 4], "event_timestamp"] = ["-5", "0"]

    report, _ = validate(tables)

    problem = only_problem(report, "negative_timestamp")
    assert (problem.column, problem.count, problem.rows) == ("event_timestamp", 2, (1, 4))
    assert problem.message.startswith("events.event_timestamp: 2 rows have a timestamp at or before 1970-01-01")
    assert "rows 1, 4; e.g. '-5', '0'" in problem.message


def test_timestamps_after_now_plus_one_day():
    tables = raw_tables()
    tables["users"].loc[0, "signup_at"] = "2024-01-01T23:00:00Z"  # within a day: fine
    tables["users"].loc[2, "signup_at"] = "2024-01-03T00:00:00Z"

    report, _ = validate(tables)

    problem = only_problem(report, "future_timestamp")
    assert (problem.table, problem.column, problem.rows) == ("users", "signup_at", (2,))


@pytest.mark.parametrize("blank", [None, "", "   ", np.nan])
def test_nulls_in_required_columns(blank):
    tables = raw_tables()
    tables["events"].loc[3, "user_id"] = blank
    tables["items"].loc[0, "category"] = blank

    report, _ = validate(tables)

    located = {(p.table, p.column, p.rows) for p in problems_of(report, "null")}
    assert located == {("events", "user_id", (3,)), ("items", "category", (0,))}
    assert {p.rule for p in report.problems} == {"null"}


def test_duplicate_event_ids_name_every_occurrence():
    tables = raw_tables()
    tables["events"].loc[[2, 5], "event_id"] = "e0"

    report, _ = validate(tables)

    problem = only_problem(report, "duplicate_event_id")
    assert (problem.column, problem.count, problem.rows, problem.examples) == ("event_id", 3, (0, 2, 5), ("'e0'",))


def test_duplicate_user_item_timestamp_events():
    tables = raw_tables()
    tables["events"].loc[4, ["user_id", "item_id", "event_timestamp"]] = ["u1", "i1", f"{T0}.0"]

    report, _ = validate(tables)

    problem = only_problem(report, "duplicate_event")
    assert problem.rows == (0, 4)
    assert problem.column == "(user_id, item_id, event_timestamp)"


def test_duplicate_items_and_users():
    tables = raw_tables()
    tables["items"] = pd.concat([tables["items"], tables["items"].iloc[[1]]], ignore_index=True)
    tables["users"].loc[2, "user_id"] = "u1"

    report, _ = validate(tables)

    assert only_problem(report, "duplicate_item_id").rows == (1, 3)
    assert only_problem(report, "duplicate_user_id").rows == (0, 2)


def test_unknown_item_and_unknown_user():
    tables = raw_tables()
    tables["events"].loc[5, "item_id"] = "i404"
    tables["events"].loc[[0, 1], "user_id"] = "ghost"

    report, _ = validate(tables)

    item = only_problem(report, "unknown_item")
    assert (item.column, item.rows, item.examples) == ("item_id", (5,), ("'i404'",))
    user = only_problem(report, "unknown_user")
    assert (user.column, user.rows) == ("user_id", (0, 1))
    assert "not in users" in user.message


def test_missing_and_unexpected_columns():
    tables = raw_tables()
    tables["events"] = tables["events"].drop(columns=["dwell_seconds"]).assign(session="s")

    report, clean = validate(tables)

    assert clean is None
    missing = only_problem(report, "missing_column")
    assert (missing.table, missing.column) == ("events", "dwell_seconds")
    unexpected = only_problem(report, "unexpected_column")
    assert (unexpected.table, unexpected.column) == ("events", "session")
    assert "events.session" in unexpected.message and "unexpected column" in unexpected.message


def test_value_ranges():
    tables = raw_tables()
    tables["events"].loc[0, "rating"] = "5.5"
    tables["events"].loc[3, "rating"] = "0"
    tables["events"].loc[4, "dwell_seconds"] = "-1"
    tables["events"].loc[2, "dwell_seconds"] = "inf"
    tables["users"].loc[1, "age"] = "121"

    report, _ = validate(tables)

    assert only_problem(report, "rating_out_of_range").rows == (0, 3)
    assert only_problem(report, "dwell_out_of_range").rows == (2, 4)
    assert only_problem(report, "age_out_of_range").rows == (1,)


def test_dwell_without_click():
    tables = raw_tables()
    tables["events"].loc[1, "dwell_seconds"] = "7"

    report, _ = validate(tables)

    problem = only_problem(report, "dwell_without_click")
    assert (problem.column, problem.rows) == ("dwell_seconds", (1,))


def test_event_before_its_item_was_created():
    tables = raw_tables()
    tables["items"].loc[2, "created_at"] = str(T0 + 3600)  # i3: events at rows 3 and 5 come before

    report, _ = validate(tables)

    problem = only_problem(report, "event_before_item_created")
    assert (problem.table, problem.column, problem.rows) == ("events", "event_timestamp", (3, 5))


def test_empty_events_table():
    tables = raw_tables()
    tables["events"] = tables["events"].iloc[:0]

    report, clean = validate(tables)

    assert clean is None
    problem = only_problem(report, "empty_table")
    assert (problem.table, problem.column, problem.count) == ("events", None, 0)


def test_rows_are_positions_not_index_labels_and_listing_is_capped():
    tables = raw_tables()
    events = pd.concat([tables["events"]] * 5, ignore_index=True)
    events["event_id"] = [f"e{i}" for i in range(len(events))]
    events["event_timestamp"] = [str(T0 + i) for i in range(len(events))]
    events.loc[2:, "clicked"] = "maybe"
    events.index = events.index[::-1] + 100
    tables["events"] = events

    report, _ = validate(tables)

    problem = only_problem(report, "type")
    assert problem.count == 28
    assert problem.rows == tuple(range(2, 12))
    assert problem.examples == ("'maybe'",)
    assert "28 rows" in problem.message and "11, ...;" in problem.message


def test_report_renderings_and_error_list_every_problem():
    tables = raw_tables()
    tables["events"].loc[2, "event_timestamp"] = "abc"
    tables["events"].loc[5, "item_id"] = "i|404"

    report, _ = validate(tables)
    markdown = report.to_markdown()
    as_dict = report.to_dict()

    assert markdown.startswith("**Data validation failed**: 2 problem(s) in 6 events, 3 items, 3 users.")
    assert "| events | event_timestamp | type | 1 | 2 | 'abc' |" in markdown
    assert "'i\\|404'" in markdown  # a pipe in a value does not break the table
    assert json.loads(json.dumps(as_dict))["problems"][0]["rows"] == [2]
    assert as_dict["ok"] is False and as_dict["counts"]["events"] == 6
    with pytest.raises(DataValidationError) as raised:
        report.raise_if_failed()
    assert isinstance(raised.value, ValueError) and raised.value.report is report
    for problem in report.problems:
        assert problem.message in str(raised.value)
