"""Feedback ingestion against a real Feast repo (SQLite online store): every click reaches the
online history exactly once, through duplicates, replays and a ``kill -9`` of the service.

The service tests run the real entrypoint (``python -m recflow.feedback``) in a
child process on a free loopback port and talk HTTP to it.
"""

from __future__ import annotations

import datetime as dt
import signal
import time

import httpx
import pytest

from recflow.features import store
from recflow.features.compute import HISTORY_LENGTH
from recflow.features.online import push_clicks
from recflow.feedback.ingest import FeedbackIngestor
from recflow.feedback.log import FeedbackEvent, FeedbackLog

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RECFLOW_OFFLINE_ROOT", raising=False)
        path = store.prepare_repo(tmp_path_factory.mktemp("feedback") / "feature_repo")
        store.feast_apply(path)
    return path


def events(prefix: str, start: int, count: int, users: int = 4) -> list[FeedbackEvent]:
    """Impressions with every third one clicked, spread over ``users`` users."""
    return [
        FeedbackEvent(
            event_id=f"{prefix}-e{n}", user_id=f"{prefix}-u{n % users}", item_id=f"i{n}",
            event_timestamp=T0 + dt.timedelta(seconds=n), clicked=n % 3 == 0, variant="stable",
        )
        for n in range(start, start + count)
    ]


def online_history(repo, users: list[str]) -> dict[str, tuple[list[str], int]]:
    values = store.get_store(repo).get_online_features(
        features=["user_history:user_recent_item_ids", "user_history:user_feedback_seq"],
        entity_rows=[{"user_id": user} for user in users],
    ).to_dict()
    return {
        user: (list(history or []), int(seq or 0))
        for user, history, seq in zip(users, values["user_recent_item_ids"], values["user_feedback_seq"])
    }


def expected_history(sent: list[FeedbackEvent], users: list[str]) -> dict[str, list[str]]:
    """Each user's clicks once, in the order first sent, the newest ``HISTORY_LENGTH``."""
    unique = list({event.event_id: event for event in reversed(sent)}.values())[::-1]
    return {
        user: [e.item_id for e in unique if e.user_id == user and e.clicked][-HISTORY_LENGTH:] for user in users
    }


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def test_a_restart_pushes_what_was_logged_but_not_pushed_and_nothing_twice(repo, tmp_path):
    sent = events("replay", 0, 30)
    users = sorted({e.user_id for e in sent})
    feedback_store = store.get_store(repo)
    with FeedbackLog(tmp_path / "log.jsonl") as log:
        log.append(sent)
        # The previous process pushed the first half of the clicks before it died.
        clicks = log.clicks()
        push_clicks(feedback_store, clicks.iloc[: len(clicks) // 2])
        for _ in range(2):  # a restart, then another one
            ingestor = FeedbackIngestor(feedback_store, log).start()
            wait_for(lambda: ingestor.pending == 0)
            ingestor.stop()
            assert ingestor.last_error is None
            held = online_history(repo, users)
            assert {user: history for user, (history, _) in held.items()} == expected_history(sent, users)
            assert max(seq for _, seq in held.values()) == int(clicks["sequence"].max())


def test_killing_the_service_mid_stream_loses_nothing_and_counts_nothing_twice(repo, tmp_path, start_feedback_service):
    log_path = tmp_path / "feedback.jsonl"
    batches = [events("kill", 20 * b, 20) for b in range(8)]
    users = sorted({e.user_id for batch in batches for e in batch})
    service = start_feedback_service(repo, log_path)
    for batch in batches[:5]:
        service.post(batch)
    service.stop(signal.SIGKILL)  # no shutdown: clicks may be logged and not pushed yet
    service = start_feedback_service(repo, log_path)
    # The client never saw batch 4's answer and sends it again, then carries on.
    receipts = [service.post(batch) for batch in batches[4:]]
    assert receipts[0] == {"accepted": 0, "duplicates": 20, "last_sequence": 100}
    assert receipts[-1]["last_sequence"] == 160
    wait_for(lambda: service.health()["pending_clicks"] == 0)
    assert service.metric("recflow_feedback_duplicates_total") == 20
    # This process counted the events it logged: batches 5-7, not the resent one.
    assert service.metric('recflow_feedback_impressions_total{variant="stable"}') == 60
    assert service.metric('recflow_feedback_clicks_total{variant="stable"}') == sum(
        e.clicked for batch in batches[5:] for e in batch
    )
    # and the sums over clusters (a user's events in one batch) the CTR's variance is taken from
    clusters = [[(sum(e.clicked for e in batch if e.user_id == user), sum(e.user_id == user for e in batch))
                 for user in {e.user_id for e in batch}] for batch in batches[5:]]  # fmt: skip
    clusters = [cluster for batch in clusters for cluster in batch]
    for metric, expected in (
        ("recflow_feedback_clusters_total", len(clusters)),
        ("recflow_feedback_cluster_clicks_squared_total", sum(c * c for c, _ in clusters)),
        ("recflow_feedback_cluster_impressions_squared_total", sum(n * n for _, n in clusters)),
        ("recflow_feedback_cluster_clicks_impressions_total", sum(c * n for c, n in clusters)),
    ):
        assert service.metric(metric + '{variant="stable"}') == expected, metric
    assert any(n > 1 for _, n in clusters) and any(c > 0 for c, _ in clusters)  # not a trivial grouping
    service.stop()
    sent = [e for batch in batches for e in batch]
    with FeedbackLog(log_path) as log:
        logged = [e.event_id for _, e in log.read()]
    assert sorted(logged) == sorted(e.event_id for e in sent)
    held = online_history(repo, users)
    assert {user: history for user, (history, _) in held.items()} == expected_history(sent, users)


def test_bad_feedback_is_a_400_naming_the_field(repo, tmp_path, start_feedback_service):
    service = start_feedback_service(repo, tmp_path / "feedback.jsonl")
    good = events("bad", 0, 1)[0].model_dump(mode="json")
    for body, field in (
        ({"events": [{**good, "clicked": "often"}]}, "events.0.clicked"),
        ({"events": [{**good, "event_timestamp": "2026-11-30T12:00:00"}]}, "events.0.event_timestamp"),
        ({"events": [{k: v for k, v in good.items() if k != "user_id"}]}, "events.0.user_id"),
        ({"evnts": []}, "evnts"),
    ):
        response = httpx.post(service.url + "/v1/feedback", json=body, timeout=10)
        assert response.status_code == 400 and field in response.json()["error"], (body, response.text)
    response = httpx.post(
        service.url + "/v1/feedback", content=b"not json", timeout=10, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert service.health()["logged_events"] == 0
