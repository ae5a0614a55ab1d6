"""The offline feedback log: every impression and click, each kept once, durable before it is acknowledged.

Events arrive from clients that retry (a timeout does not say whether the
first attempt landed), so the same ``event_id`` may come more than once; the
log keeps the first and reports the rest as duplicates. Each kept event gets
the next position (``sequence``, from 1), the order in which it was logged.

The file is JSON lines, appended and fsync'ed before :meth:`FeedbackLog.append`
returns, so an acknowledged event survives a crash. A crash in the middle of
an append can leave a torn last line: it was never acknowledged, and opening
the log cuts it off. A damaged line anywhere else is an error, never skipped.
One process writes a log at a time (an exclusive ``flock``).

Positions make replay idempotent downstream: the online history records the
newest position it holds (:func:`recflow.features.online.push_clicks`).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class FeedbackEvent(BaseModel):
    """One item shown to a user, and whether it was clicked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(min_length=1, max_length=200, description="Unique per impression; retries reuse it")
    user_id: str = Field(min_length=1, max_length=200)
    item_id: str = Field(min_length=1, max_length=200)
    event_timestamp: AwareDatetime = Field(description="When the item was shown (UTC offset required)")
    clicked: bool
    dwell_seconds: float = Field(0.0, ge=0)
    # The traffic slot that served the item (stable, canary): a metric label, so a short name.
    variant: str = Field("", pattern=r"^[a-z0-9_-]{0,32}$")
    model_version: str = Field("", max_length=200)


@dataclass(frozen=True)
class Appended:
    """What one :meth:`FeedbackLog.append` did: the events it logged, with positions, and the duplicates."""

    logged: list[tuple[int, FeedbackEvent]]
    duplicates: int


class LogDamaged(RuntimeError):
    """A line of the log other than a torn last one does not parse."""


class FeedbackLog:
    """``with FeedbackLog(path) as log: log.append(events)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = None
        self._positions: dict[str, int] = {}
        self.last_sequence = 0

    def open(self) -> FeedbackLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(f"{self.path} is open in another process (one writer per feedback log)") from None
        self._cut_torn_tail()
        for sequence, event in self.read():
            self._positions[event.event_id] = sequence
            self.last_sequence = sequence
        return self

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> FeedbackLog:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._positions)

    def append(self, events: Sequence[FeedbackEvent]) -> Appended:
        """Log the events not logged before (by ``event_id``); durable when this returns."""
        with self._lock:
            if self._file is None:
                raise RuntimeError(f"{self.path} is not open")
            logged, duplicates, lines = [], 0, []
            for event in events:
                if event.event_id in self._positions:
                    duplicates += 1
                    continue
                sequence = self.last_sequence + len(logged) + 1
                self._positions[event.event_id] = sequence
                logged.append((sequence, event))
                lines.append(json.dumps({"sequence": sequence, **event.model_dump(mode="json")}) + "\n")
            if lines:
                try:
                    self._file.write("".join(lines).encode())
                    self._file.flush()
                    os.fsync(self._file.fileno())
                except OSError:
                    for _, event in logged:
                        del self._positions[event.event_id]
                    self._cut_torn_tail()
                    raise
                self.last_sequence = logged[-1][0]
            return Appended(logged, duplicates)

    def read(self, after: int = 0) -> Iterator[tuple[int, FeedbackEvent]]:
        """Every logged event with a position above ``after``, in order.

        Needs no :meth:`open`: a reader beside the writing process sees every
        complete line (a line still being written ends the read early).
        An event's position is its line number (appends number them so, and a
        failed append is cut back off), so the lines up to ``after`` are
        skipped unparsed: a follower polling a long log reads only what is new.
        """
        with self.path.open("rb") as source:
            for number, line in enumerate(source, start=1):
                if not line.endswith(b"\n"):
                    return
                if number <= after:
                    continue
                try:
                    record = json.loads(line)
                    sequence = record.pop("sequence")
                    event = FeedbackEvent.model_validate(record)
                except (ValueError, KeyError) as error:
                    raise LogDamaged(f"{self.path}:{number}: {error}") from error
                if sequence != number:
                    raise LogDamaged(f"{self.path}:{number}: position {sequence} on line {number}")
                yield sequence, event

    def clicks(self, after: int = 0) -> pd.DataFrame:
        """The logged clicks above position ``after``, in the layout ``push_clicks`` takes."""
        rows = [
            (event.user_id, event.item_id, event.event_timestamp, sequence)
            for sequence, event in self.read(after)
            if event.clicked
        ]
        return clicks_frame(rows)

    def _cut_torn_tail(self) -> None:
        """Drop bytes after the last newline: an append that never completed (and was never acknowledged)."""
        self._file.seek(0, os.SEEK_END)
        size = self._file.tell()
        if size == 0:
            return
        keep = size
        chunk = 4096
        while keep > 0:
            start = max(0, keep - chunk)
            self._file.seek(start)
            block = self._file.read(keep - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        if keep != size:
            self._file.truncate(keep)
            self._file.flush()
            os.fsync(self._file.fileno())
        self._file.seek(0, os.SEEK_END)


def clicks_frame(rows: Sequence[tuple[str, str, object, int]]) -> pd.DataFrame:
    """``(user_id, item_id, event_timestamp, sequence)`` rows as the frame ``push_clicks`` takes."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_timestamp", "sequence"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.astype({"sequence": "int64"})
