"""The local platform for real: HAProxy, Prometheus and model servers (Debian packages, the tiny bundle).

One platform for the module, in the order a user meets it: ``up``, a
server killed with -9 and restarted, a rollout rolled back, a rollout
promoted, ``down``. During both rollouts a client sends predictions through
the proxy and feedback by the variant that answered (``X-Recflow-Variant``)
to a stand-in feedback service the platform runs (feedback_stub.py), so
Prometheus has every figure the analysis reads; not one request may fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from recflow.cli import main
from recflow.platform.commands import down, status, up
from recflow.platform.config import PlatformConfig, ServiceSpec
from recflow.platform.prometheus import scraped
from recflow.platform.rollout import rollout
from recflow.platform.state import PlatformState, alive
from recflow.rollout.analysis import AnalysisConfig
from recflow.rollout.controller import RolloutConfig, read_log
from recflow.rollout.proxy import USER_HEADER, VARIANT_HEADER

needs_binaries = pytest.mark.skipif(
    shutil.which("haproxy") is None or shutil.which("prometheus") is None,
    reason="haproxy or prometheus missing (Debian packages haproxy, prometheus; .ci/run installs them)",
)
STUB = Path(__file__).with_name("feedback_stub.py")


def eventually(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def status_once(workspace: Path, condition, timeout: float) -> str:
    """``recflow status``'s report once ``condition(healthy, report)`` holds."""
    deadline = time.monotonic() + timeout
    while not condition(*(answer := status(workspace))):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s:\n{answer[1]}")
        time.sleep(0.2)
    return answer[1]


@pytest.fixture(scope="module")
def platform(workspace, tmp_path_factory):
    serving = tmp_path_factory.mktemp("platform") / "serving.yaml"
    serving.write_text(yaml.safe_dump({"request_time": workspace.request_time.isoformat(), "max_k": 50}))
    config = PlatformConfig(
        serving_config=serving,
        stop_grace_seconds=10,
        restart_backoff_seconds=0.5,
        services=[ServiceSpec(name="feedback", command=["{python}", str(STUB), "--port", "{port}"])],
    )
    try:
        yield up(workspace.path, str(workspace.bundle), config)
    finally:
        down(workspace.path)


class Client:
    """Predictions through the proxy from two threads, each user under their own header; feedback by variant."""

    def __init__(self, state: PlatformState, users: list[str]):
        self.proxy, self.feedback = state.proxy_url, state.process("feedback").url
        self.users = users
        self.outcomes: Counter = Counter()  # status code, or the exception's name
        self.variants: Counter = Counter()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(offset,)) for offset in (0, 1)]

    def _send(self, offset: int) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(offset, 10**9, 2):
                # Paced, to leave the two cores some room for starting the canary.
                if self.stopping.wait(0.02):
                    return
                user = self.users[i % len(self.users)]
                try:
                    answer = client.post(
                        f"{self.proxy}/v1/models/recommender:predict", headers={USER_HEADER: user},
                        json={"instances": [{"user_id": user, "k": 5}]},
                    )  # fmt: skip
                except httpx.HTTPError as error:
                    self.outcomes[type(error).__name__] += 1
                    continue
                self.outcomes[answer.status_code] += 1
                if answer.status_code == 200:
                    variant = answer.headers[VARIANT_HEADER]
                    self.variants[variant] += 1
                    # One click in four answers, whichever variant served: the same click-through for both.
                    event = {"variant": variant, "impressions": 5, "clicks": int(i % 4 == 0)}
                    if client.post(f"{self.feedback}/feedback", json=event).status_code != 200:
                        self.outcomes["feedback refused"] += 1

    def __enter__(self) -> Client:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def fast_rollout(**analysis) -> RolloutConfig:
    """Steps of 3 s with a few dozen requests each: the platform's mechanics, at test speed."""
    settings = {"steps": [50, 100], "min_requests": 20, "min_impressions": 50, **analysis}
    return RolloutConfig(analysis=AnalysisConfig(**settings), interval_seconds=3, max_holds_per_step=3)


@pytest.fixture
def candidate(workspace, tmp_path) -> Path:
    """A new bundle: a copy of the blessed one, in a directory of its own."""
    return Path(shutil.copytree(workspace.bundle, tmp_path / "candidate"))


@needs_binaries
def test_up_starts_every_process_and_status_shows_them_healthy(platform, workspace, capsys):
    assert {p.name: p.status for p in platform.processes} == {
        "proxy": "running", "prometheus": "running", "stable": "running", "feedback": "running"
    }  # fmt: skip
    assert main(["status", "--workspace", str(workspace.path)]) == 0
    report = capsys.readouterr().out
    for process in platform.processes:
        assert f"{process.url}" in report
    assert report.count("health ok") == 4
    assert httpx.get(f"{platform.prometheus_url}/api/v1/targets").json()["data"]["activeTargets"]
    with pytest.raises(RuntimeError, match="already runs"):
        up(workspace.path, str(workspace.bundle))


@needs_binaries
def test_a_killed_model_server_is_reported_and_restarted(platform, workspace):
    victim = PlatformState.read(workspace.path).process("stable").pid
    os.kill(victim, signal.SIGKILL)
    # Down (crashed, then starting again), and says why.
    status_once(workspace.path, lambda healthy, report: not healthy and "exit code -9" in report, 10)
    report = status_once(workspace.path, lambda healthy, report: healthy, 60)
    stable = next(line for line in report.splitlines() if line.startswith("stable"))
    assert "running" in stable and "health ok" in stable and "exit code -9, restarted 1x" in stable
    assert PlatformState.read(workspace.path).process("stable").pid != victim


@needs_binaries
def test_a_canary_failing_its_analysis_is_rolled_back_and_no_request_fails(platform, workspace, candidate, tmp_path):
    # A canary cannot answer in 1% of the stable's p99: the analysis must roll it back.
    config = fast_rollout(max_p99_ratio=0.01)
    outcome = {}
    with Client(platform, workspace.known_users()[:200]) as client:
        running = threading.Thread(target=lambda: outcome.update(
            zip(("result", "report"), rollout(workspace.path, candidate, config, tmp_path / "rollout.html"))))
        running.start()
        eventually(lambda: PlatformState.read(workspace.path).canary, 60, "the canary is registered")
        with pytest.raises(RuntimeError, match="a rollout is already running"):
            rollout(workspace.path, candidate, config)
        running.join(120)
    result = outcome["result"]
    assert result.outcome == "rolled back" and "p99 latency" in result.reason
    assert set(client.outcomes) == {200}, client.outcomes
    assert client.variants["canary"] > 0
    state = PlatformState.read(workspace.path)
    assert state.canary is None and state.process("canary") is None
    assert state.process("stable").bundle == workspace.bundle
    assert {httpx.post(f"{platform.proxy_url}/v1/models/recommender:predict", headers={USER_HEADER: f"u{i}"},
                       json={"instances": [{"user_id": f"u{i}"}]}).headers[VARIANT_HEADER]
            for i in range(20)} == {"stable"}  # fmt: skip
    assert read_log(result.log_path)[-1]["action"] == "rollback"
    assert "Rollout: rollback" in outcome["report"].read_text()


@needs_binaries
def test_a_healthy_canary_is_promoted_to_stable_and_no_request_fails(platform, workspace, candidate, tmp_path):
    # A few dozen requests per variant and interval, on two busy cores: the p99 and the score histogram
    # would be decided by noise. Those checks have their own tests (tests/rollout); the platform's are here.
    config = fast_rollout(max_p99_ratio=10, max_score_shift=1.0)
    previous = PlatformState.read(workspace.path).process("stable")
    with Client(platform, workspace.known_users()[:200]) as client:
        result, report = rollout(workspace.path, candidate, config, tmp_path / "rollout.html")
        time.sleep(1)  # requests after the promotion go to the new stable server
    assert result.outcome == "promoted", result.reason
    assert set(client.outcomes) == {200}, client.outcomes
    assert client.variants["canary"] > 0 and client.variants["stable"] > 0
    state = PlatformState.read(workspace.path)
    stable = state.process("stable")
    assert stable.bundle == candidate and stable.pid != previous.pid and stable.status == "running"
    assert state.canary is None and state.process("canary") is None
    assert not alive(previous.pid)
    healthy, lines = status(workspace.path)
    assert healthy and "bundle candidate" in lines
    eventually(lambda: scraped(platform.prometheus_url, "stable", f"127.0.0.1:{stable.port}"), 15,
               "Prometheus scrapes the promoted server as job stable")  # fmt: skip
    actions = [r["action"] for r in read_log(result.log_path)]  # a hold: an interval short of requests
    assert actions[-1] == "promote" and "advance" in actions and "rollback" not in actions, actions
    assert report.exists()


@needs_binaries
def test_down_stops_everything_and_is_idempotent(platform, workspace, capsys):
    pids = [p.pid for p in PlatformState.read(workspace.path).processes] + [platform.supervisor_pid]
    assert main(["down", "--workspace", str(workspace.path)]) == 0
    assert not [pid for pid in pids if alive(pid)]
    assert main(["status", "--workspace", str(workspace.path)]) == 1
    assert "no platform running" in capsys.readouterr().out
    assert "no platform running" in down(workspace.path)


@needs_binaries
def test_down_stops_what_a_killed_supervisor_left(workspace):
    state = up(workspace.path, str(workspace.bundle), PlatformConfig(stop_grace_seconds=5))
    try:
        os.kill(state.supervisor_pid, signal.SIGKILL)
        eventually(lambda: not alive(state.supervisor_pid), 5, "the supervisor is dead")
        healthy, report = status(workspace.path)
        assert not healthy and "supervisor" in report and "gone" in report
        assert "stopped 3 processes" in down(workspace.path)
        assert not [p.pid for p in state.processes if alive(p.pid)]
    finally:
        down(workspace.path)


def test_missing_binaries_are_named_with_the_command_that_installs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="sudo apt-get install haproxy prometheus"):
        up(tmp_path)


def test_the_platform_config_refuses_unknown_keys_and_its_own_process_names():
    with pytest.raises(ValueError, match="extra"):
        PlatformConfig.model_validate({"proxy_prot": 8080})
    with pytest.raises(ValueError, match="platform's own processes"):
        PlatformConfig(services=[ServiceSpec(name="stable", command=[sys.executable])])
