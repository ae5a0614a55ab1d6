"""The local rollout: a real HAProxy (Debian package) splitting traffic, and the controller moving it.

Proxy: weights move live, users stay put, nothing fails. The two backends
are small HTTP servers on loopback that answer with their variant's name
(the proxy neither knows nor cares what serves behind it).

Controller: it drives the real proxy; each interval's figures come from a
script instead of Prometheus (that path is ``test_prometheus.py``), so the
decisions are known in advance, and the wait between intervals is skipped.
"""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dataclasses

import httpx
import pytest

from recflow.rollout.analysis import AnalysisConfig, VariantMetrics
from recflow.rollout.controller import RolloutConfig, read_log, render_report, run_rollout
from recflow.rollout.proxy import USER_HEADER, TrafficProxy
from serving.process import free_port

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy missing (Debian package haproxy; .ci/run installs it)"
)
USERS = [f"user-{i}" for i in range(400)]


def backend(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length", 0))
            self.rfile.read(length)
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    stable, canary = backend("stable"), backend("canary")
    with TrafficProxy(
        tmp_path_factory.mktemp("haproxy"), free_port(),
        f"127.0.0.1:{stable.server_address[1]}", f"127.0.0.1:{canary.server_address[1]}",
    ) as running:
        with httpx.Client(base_url=f"http://127.0.0.1:{running.port}", timeout=10) as client:
            yield running, client
    stable.shutdown()
    canary.shutdown()


def variants(client, users=USERS) -> dict[str, str]:
    return {user: client.post("/v1/models/recommender:predict", headers={USER_HEADER: user}, content=b"{}").text for user in users}


def test_weights_move_users_in_proportion_and_a_user_keeps_their_variant(proxy):
    running, client = proxy
    running.set_canary_percent(0)
    assert set(variants(client).values()) == {"stable"}
    running.set_canary_percent(25)
    assert running.weights() == {"stable": 75, "canary": 25}
    at_25 = variants(client)
    share = sum(v == "canary" for v in at_25.values()) / len(USERS)
    assert 0.15 < share < 0.35, share
    assert variants(client) == at_25  # sticky: the same users on the same variant
    running.set_canary_percent(50)
    at_50 = variants(client)
    assert 0.4 < sum(v == "canary" for v in at_50.values()) / len(USERS) < 0.6
    kept = [user for user, v in at_25.items() if v == "canary"]
    assert sum(at_50[user] == "canary" for user in kept) / len(kept) > 0.9
    running.set_canary_percent(100)
    assert set(variants(client).values()) == {"canary"}


def test_no_request_fails_while_the_weights_change(proxy):
    running, client = proxy
    statuses, stop = [], threading.Event()

    def load():
        with httpx.Client(base_url=f"http://127.0.0.1:{running.port}", timeout=10) as own:
            i = 0
            while not stop.is_set():
                user = USERS[i % len(USERS)]
                i += 1
                try:
                    statuses.append(own.post("/", headers={USER_HEADER: user}, content=b"{}").status_code)
                except httpx.HTTPError as error:
                    statuses.append(type(error).__name__)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for percent in (5, 25, 50, 100, 0, 50, 0):
        running.set_canary_percent(percent)
        threading.Event().wait(0.3)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert len(statuses) > 100
    assert set(statuses) == {200}


def test_bad_percent_is_refused(proxy):
    running, _ = proxy
    with pytest.raises(ValueError, match="0..100"):
        running.set_canary_percent(120)


HEALTHY = VariantMetrics(
    requests=2000, errors=1, users=2000, fallbacks=5, p99_seconds=0.04, impressions=20000, clicks=2000,
    score_counts=(5, 20, 40, 20, 5),
)
CONFIG = RolloutConfig(analysis=AnalysisConfig(steps=[5, 25, 50, 100]), interval_seconds=30, max_holds_per_step=2)


def scripted(running, canary_figures, stable_figures=lambda seconds: HEALTHY):
    """A measure function that records the proxy's canary weight at every interval.

    ``canary_figures(interval number)``; ``stable_figures(seconds measured)``.
    """
    seen = []

    def measure(variant: str, seconds: float) -> VariantMetrics:
        if variant == "stable":
            seen.append(running.weights()["canary"])
            return stable_figures(seconds)
        return canary_figures(len(seen))

    return measure, seen


def no_wait(seconds: float) -> None:
    assert seconds == CONFIG.interval_seconds


def test_a_healthy_canary_walks_every_step_and_is_promoted(proxy, tmp_path):
    running, _ = proxy
    measure, seen = scripted(running, lambda interval: HEALTHY)
    result = run_rollout(running, measure, CONFIG, tmp_path / "rollout.jsonl", sleep=no_wait)
    assert result.outcome == "promoted"
    # At 100 % the stable serves nobody: it is not measured, its last interval with traffic stands in.
    assert seen == [5, 25, 50]
    assert running.weights() == {"stable": 0, "canary": 100}
    log = read_log(result.log_path)
    assert [r["action"] for r in log] == ["advance", "advance", "advance", "promote"]
    assert [r["stable_interval"] for r in log] == ["this", "this", "this", "previous"]
    assert log[0]["canary"]["requests"] == 2000 and {c["name"] for c in log[0]["checks"]} >= {"error rate"}
    page = render_report(result.log_path, tmp_path / "rollout.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "promote" in page and "<td>last 30 s</td>" in page


def test_a_faulty_canary_is_rolled_back_at_its_first_analysis_and_never_reaches_100(proxy, tmp_path):
    running, _ = proxy
    faulty = dataclasses.replace(HEALTHY, errors=150)  # 7.5% 5xx
    measure, seen = scripted(running, lambda interval: HEALTHY if interval < 2 else faulty)
    result = run_rollout(running, measure, CONFIG, tmp_path / "rollout.jsonl", sleep=no_wait)
    assert result.outcome == "rolled back" and "error rate" in result.reason
    assert seen == [5, 25]  # rolled back within the second interval, at 25%
    assert running.weights() == {"stable": 100, "canary": 0}
    assert read_log(result.log_path)[-1]["action"] == "rollback"


def test_a_canary_without_evidence_is_rolled_back_after_the_allowed_holds(proxy, tmp_path):
    running, _ = proxy
    quiet = dataclasses.replace(HEALTHY, requests=10, users=10)
    measure, seen = scripted(running, lambda interval: quiet)
    result = run_rollout(running, measure, CONFIG, tmp_path / "rollout.jsonl", sleep=no_wait)
    assert result.outcome == "rolled back" and "no verdict" in result.reason
    assert seen == [5, 5, 5]
    assert [r["action"] for r in read_log(result.log_path)] == ["hold", "hold", "rollback"]
    assert running.weights()["canary"] == 0


def test_a_hold_adds_the_next_interval_to_the_steps_evidence(proxy, tmp_path):
    """A step is judged on every interval since its weight was set: two short intervals together suffice."""
    running, _ = proxy
    per_interval = CONFIG.analysis.min_requests * 3 // 4  # each interval alone is short of evidence
    slow = {"requests": per_interval, "users": per_interval}

    def stable(seconds: float) -> VariantMetrics:
        intervals = round(seconds / CONFIG.interval_seconds)
        return dataclasses.replace(HEALTHY, **{name: count * intervals for name, count in slow.items()})

    measure, seen = scripted(running, lambda interval: HEALTHY, stable)
    result = run_rollout(running, measure, CONFIG, tmp_path / "rollout.jsonl", sleep=no_wait)
    assert result.outcome == "promoted"
    log = read_log(result.log_path)
    assert [(r["percent"], r["action"], r["seconds"]) for r in log] == [
        (5, "hold", 30), (5, "advance", 60), (25, "hold", 30), (25, "advance", 60),
        (50, "hold", 30), (50, "advance", 60), (100, "promote", 30),
    ]  # fmt: skip
    assert seen == [5, 5, 25, 25, 50, 50]


def test_a_deep_directory_still_gets_a_runtime_socket(tmp_path):
    """A UNIX socket path must fit 108 bytes; a deep workspace's proxy puts its socket under the temp dir."""
    stable = backend("stable")
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    try:
        with TrafficProxy(deep, free_port(), f"127.0.0.1:{stable.server_address[1]}", f"127.0.0.1:{stable.server_address[1]}") as running:
            assert len(str(deep / "haproxy.sock")) > 108 and len(str(running.socket_path)) <= 100
            running.set_canary_percent(0)  # the runtime API answers through the short socket
            socket_dir = running.socket_path.parent
        assert not socket_dir.exists()
    finally:
        stable.shutdown()
