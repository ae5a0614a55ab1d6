"""The online store seam of the real server: consistency, fresh signals, outages; SQLite and Redis.

Consistency: the offline path (features from Feast's point-in-time join, the
stack rebuilt from the bundle's models the way evaluation builds it) and the
server (online features, the bundle's exported index, micro-batches) must
serve the same top-k with the same scores.

Redis: ``feature_repo/feature_store.cluster.yaml`` as the chart uses it, with
a real ``redis-server`` on a free loopback port and the SQL registry on a
SQLite URL (the chart's is Postgres; SQLAlchemy makes them one code path),
over the tiny workspace's offline tables. A server over it must answer what
the SQLite-backed one answers, see pushed clicks, and survive Redis stopping
and coming back.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from recflow.features import store
from recflow.features.online import push_clicks
from recflow.features.training_set import entity_features_as_of, on_demand_transforms
from recflow.recommender.stack import build_stack, load_config
from serving.process import ServerProcess

V1 = "/v1/models/recommender:predict"
JSON = {"Content-Type": "application/json"}


def recommend(server, users: list[str], k: int = 10) -> list[dict]:
    body = {"instances": [{"user_id": user, "k": k} for user in users]}
    response = httpx.post(server.url + V1, json=body, headers=JSON, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def offline_top_k(workspace, users: list[str], k: int) -> list[list[tuple[str, float]]]:
    fs = store.get_store(workspace.feature_repo)
    service = workspace.card["feature_service"]
    features = entity_features_as_of(fs, service, "user", users, workspace.snapshot_at)
    bundle = workspace.bundle
    items = pd.read_parquet(bundle / "item_features.parquet")
    stack = build_stack(bundle / "model", bundle / "ranker", items, load_config(bundle), on_demand_transforms(fs, service))
    # Serving's seen-item rule: the user's recent clicks (the history feature).
    seen = dict(zip(features["user_id"], map(set, features["user_recent_item_ids"])))
    return stack.recommend(features, k, seen, workspace.request_time)


def test_served_top_k_equals_the_offline_stack_top_k(server, workspace):
    users = workspace.known_users()[:24]
    expected = offline_top_k(workspace, users, 10)
    one_by_one = [recommend(server, [user])[0] for user in users]
    batched = recommend(server, users[:16]) + recommend(server, users[16:])
    for served in (one_by_one, batched):
        for prediction, offline in zip(served, expected):
            assert prediction["fallback"] is None
            assert [item["item_id"] for item in prediction["items"]] == [item for item, _ in offline]
            np.testing.assert_allclose(
                [item["score"] for item in prediction["items"]], [score for _, score in offline], rtol=1e-5, atol=1e-6
            )


def test_a_pushed_click_changes_the_next_recommendation(server, workspace):
    user = workspace.known_users()[-1]
    before = [item["item_id"] for item in recommend(server, [user])[0]["items"]]
    clicked = before[0]
    pushed = push_clicks(
        store.get_store(workspace.feature_repo),
        pd.DataFrame(
            {
                "user_id": [user],
                "item_id": [clicked],
                "event_timestamp": [workspace.snapshot_at + pd.Timedelta(minutes=5)],
                "sequence": [1],
            }
        ),
    )
    assert pushed["user_recent_item_ids"].iloc[0][-1] == clicked
    after = [item["item_id"] for item in recommend(server, [user])[0]["items"]]
    # The click is in the history now: the seen-item filter drops it, and the
    # user's vector moved, so the list is a new one.
    assert clicked not in after
    assert after != before


def _fallbacks(server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith("recflow_fallback_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            values[reason] = float(line.rsplit(" ", 1)[1])
    return values


class Load:
    """Requests from a background thread; records status codes and fallbacks."""

    def __init__(self, server, users: list[str]):
        self.server, self.users = server, users
        self.statuses: list[int] = []
        self.fallbacks: list[str | None] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, headers=JSON, timeout=30) as client:
            index = 0
            while not self.stop.is_set():
                user = self.users[index % len(self.users)]
                index += 1
                response = client.post(V1, json={"instances": [{"user_id": user}]})
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.fallbacks.append(response.json()["predictions"][0]["fallback"])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_locked_online_store_gives_fallbacks_then_recovers_without_a_restart(workspace, serving_config, tmp_path):
    """Another process holds the SQLite store's exclusive lock mid-load: reads block past the deadline."""
    config = serving_config(feature_deadline_ms=50)
    arguments = ["--bundle", str(workspace.bundle), "--feature-repo", str(workspace.feature_repo), "--config", str(config)]
    users = workspace.known_users()[:20]
    with ServerProcess(arguments, tmp_path / "server.log") as server, Load(server, users) as load:
        wait_for(lambda: len(load.fallbacks) > 20)
        assert load.fallbacks[-1] is None
        before = _fallbacks(server).get("feature_store_timeout", 0.0)
        # A pending exclusive lock keeps new readers out, so it is granted once current reads end.
        lock = sqlite3.connect(workspace.feature_repo / "data" / "online_store.db", timeout=5)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            mark = len(load.fallbacks)
            wait_for(lambda: load.fallbacks[mark:].count("feature_store_timeout") >= 10)
        finally:
            lock.rollback()
            lock.close()
        assert _fallbacks(server)["feature_store_timeout"] >= before + 10
        mark = len(load.fallbacks)
        wait_for(lambda: load.fallbacks[mark:][-5:] == [None] * 5 and len(load.fallbacks) - mark >= 5)
    assert set(load.statuses) == {200}


@pytest.fixture(scope="module")
def redis_repo(workspace, redis_server, tmp_path_factory):
    """The cluster variant of the repo, applied and materialized into Redis; its env stays set."""
    root = tmp_path_factory.mktemp("redis_repo")
    env = {
        "FEAST_REGISTRY_URL": f"sqlite:///{root / 'registry.db'}",
        "REDIS_CONNECTION_STRING": redis_server.connection_string,
        "RECFLOW_OFFLINE_ROOT": str(store.offline_root(workspace.feature_repo).resolve()),
    }
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    repo = store.prepare_repo(root / "feature_repo", variant="cluster")
    store.feast_apply(repo)
    store.materialize(repo, workspace.snapshot_at.to_pydatetime())
    yield repo, env
    patch.undo()


@pytest.fixture(scope="module")
def redis_server_process(workspace, redis_repo, tmp_path_factory):
    repo, env = redis_repo
    tmp = tmp_path_factory.mktemp("redis_server")
    config = tmp / "serving.yaml"
    config.write_text(f"request_time: '{workspace.request_time.isoformat()}'\nmax_users_per_request: 16\n")
    arguments = ["--bundle", str(workspace.bundle), "--feature-repo", str(repo), "--config", str(config)]
    with ServerProcess(arguments, tmp / "server.log", env=env) as process:
        yield process


def test_redis_backed_server_answers_what_the_sqlite_backed_one_answers(server, redis_server_process, workspace):
    users = workspace.known_users()[:12] + ["never-seen-user"]
    assert recommend(redis_server_process, users) == recommend(server, users)


def test_a_click_pushed_to_redis_changes_the_next_recommendation(redis_server_process, redis_repo, workspace):
    repo, _ = redis_repo
    user = workspace.known_users()[-2]
    before = [item["item_id"] for item in recommend(redis_server_process, [user])[0]["items"]]
    click = pd.DataFrame(
        {"user_id": [user], "item_id": [before[0]], "event_timestamp": [workspace.snapshot_at + pd.Timedelta(minutes=5)], "sequence": [1]}
    )
    push_clicks(store.get_store(repo), click)
    after = [item["item_id"] for item in recommend(redis_server_process, [user])[0]["items"]]
    assert before[0] not in after


def test_stopping_redis_gives_fallbacks_and_restarting_it_restores_answers(redis_server_process, redis_server, workspace):
    users = workspace.known_users()[:20]
    with Load(redis_server_process, users) as load:
        wait_for(lambda: len(load.fallbacks) > 20)
        redis_server.stop()
        try:
            mark = len(load.fallbacks)
            wait_for(lambda: sum(f is not None and f.startswith("feature_store") for f in load.fallbacks[mark:]) >= 10)
        finally:
            redis_server.start()
        counted = _fallbacks(redis_server_process)
        assert counted.get("feature_store_unavailable", 0) + counted.get("feature_store_timeout", 0) >= 10
        mark = len(load.fallbacks)
        wait_for(lambda: len(load.fallbacks) - mark >= 5 and load.fallbacks[mark:][-5:] == [None] * 5)
    assert set(load.statuses) == {200}
