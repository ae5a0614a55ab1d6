"""The feedback log: each event once, durable, a torn last line cut off, damage elsewhere an error."""

from __future__ import annotations

import datetime as dt

import pytest

from recflow.feedback.log import FeedbackEvent, FeedbackLog, LogDamaged

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)


def event(number: int, clicked: bool = False, user: str = "u1") -> FeedbackEvent:
    return FeedbackEvent(
        event_id=f"e{number}", user_id=user, item_id=f"i{number}",
        event_timestamp=T0 + dt.timedelta(seconds=number), clicked=clicked, variant="stable",
    )


def test_events_get_positions_in_order_and_repeats_are_dropped(tmp_path):
    with FeedbackLog(tmp_path / "log.jsonl") as log:
        first = log.append([event(1), event(2, clicked=True)])
        again = log.append([event(2, clicked=True), event(3), event(3)])
        assert [sequence for sequence, _ in first.logged] == [1, 2]
        assert [(sequence, e.event_id) for sequence, e in again.logged] == [(3, "e3")]
        assert again.duplicates == 2
        assert log.clicks()[["item_id", "sequence"]].values.tolist() == [["i2", 2]]


def test_a_reopened_log_remembers_every_event(tmp_path):
    with FeedbackLog(tmp_path / "log.jsonl") as log:
        log.append([event(1), event(2)])
    with FeedbackLog(tmp_path / "log.jsonl") as log:
        appended = log.append([event(2), event(3)])
        assert appended.duplicates == 1
        assert [sequence for sequence, _ in appended.logged] == [3]
        assert [e.event_id for _, e in log.read(after=1)] == ["e2", "e3"]


def test_a_torn_last_line_is_cut_off_and_its_event_can_be_sent_again(tmp_path):
    path = tmp_path / "log.jsonl"
    with FeedbackLog(path) as log:
        log.append([event(1)])
    whole = path.read_bytes()
    # A crash in the middle of the second append: half a line, never acknowledged.
    line = whole.replace(b'"e1"', b'"e2"').replace(b'"sequence": 1', b'"sequence": 2')
    path.write_bytes(whole + line[: len(line) // 2])
    with FeedbackLog(path) as log:
        assert len(log) == 1
        assert path.read_bytes() == whole
        assert [sequence for sequence, _ in log.append([event(2)]).logged] == [2]


def test_a_damaged_line_before_the_end_is_an_error_naming_it(tmp_path):
    path = tmp_path / "log.jsonl"
    with FeedbackLog(path) as log:
        log.append([event(1), event(2)])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b'{"sequence": 1, "event_id": \n' + lines[1])
    with pytest.raises(LogDamaged, match=r"log.jsonl:1"):
        FeedbackLog(path).open()


def test_one_writer_per_log(tmp_path):
    with FeedbackLog(tmp_path / "log.jsonl"):
        with pytest.raises(RuntimeError, match="another process"):
            FeedbackLog(tmp_path / "log.jsonl").open()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"event_timestamp": "2026-11-30T12:00:00"}, "event_timestamp"),
        ({"clicked": "maybe"}, "clicked"),
        ({"event_id": ""}, "event_id"),
        ({"variant": "Canary Two"}, "variant"),
        ({"dwell_seconds": -1}, "dwell_seconds"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_events_are_rejected_naming_the_field(change, field):
    valid = event(1).model_dump(mode="json")
    with pytest.raises(ValueError, match=field):
        FeedbackEvent.model_validate({**valid, **change})
