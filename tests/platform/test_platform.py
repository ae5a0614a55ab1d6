"""The local platform for real: HAProxy, Prometheus, model servers and the feedback service (the tiny bundle).

One platform for the module, in the order a user meets it: ``up``, a
server killed with -9 and restarted, the rollout drills (a slow, a failing
and a spoiled candidate, each rolled back), a sound candidate promoted,
``down``. During every rollout the simulator (recflow.feedback.simulator)
plays the world's users through the proxy and sends their clicks, by the
variant that served them, to the platform's feedback service, so Prometheus
has every figure the analysis reads; not one request may fail.

The platform runs on a workspace of its own (a copy of the tiny workspace's
feature repo): the feedback service writes clicks into its online store, and
the serving tests compare the session workspace's store with offline values.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
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
from recflow.feedback.simulator import SimulationConfig, Simulator, ground_truth_for
from recflow.rollout.controller import RolloutConfig, read_log
from recflow.rollout.proxy import USER_HEADER, VARIANT_HEADER

needs_binaries = pytest.mark.skipif(
    shutil.which("haproxy") is None or shutil.which("prometheus") is None,
    reason="haproxy or prometheus missing (Debian packages haproxy, prometheus; .ci/run installs them)",
)


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
def platform_workspace(workspace, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("platform_workspace")
    shutil.copytree(workspace.feature_repo, path / "feature_repo")
    return path


@pytest.fixture(scope="module")
def platform(workspace, platform_workspace):
    serving = platform_workspace / "serving.yaml"
    serving.write_text(yaml.safe_dump({"request_time": workspace.request_time.isoformat(), "max_k": 50}))
    config = PlatformConfig(serving_config=serving, stop_grace_seconds=10, restart_backoff_seconds=0.5)
    try:
        yield up(platform_workspace, str(workspace.bundle), config)
    finally:
        down(platform_workspace)


class Traffic:
    """The simulator in a background thread, through the proxy, until the block ends."""

    def __init__(self, state: PlatformState, card: dict):
        config = SimulationConfig(rps=25, duration_seconds=600, k=5, seed=len(card["version"]))
        self.simulator = Simulator(config, ground_truth_for(card), state.proxy_url, state.process("feedback").url)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: setattr(self, "report", self.simulator.run(self.stop)))

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)


def fast_rollout(**analysis) -> RolloutConfig:
    """Intervals of 4 s with a few dozen requests per variant: the platform's mechanics, at test speed.

    p99 within 3x of the stable's: a 250 ms delay is far beyond it, the noise
    of a few dozen requests on two busy cores is not.
    """
    settings = {"steps": [25, 50, 100], "min_requests": 15, "min_impressions": 60, "max_p99_ratio": 3.0, **analysis}
    return RolloutConfig(analysis=AnalysisConfig(**settings), interval_seconds=4, max_holds_per_step=3)


@pytest.fixture
def candidate(workspace, tmp_path) -> Path:
    """A new bundle: a copy of the blessed one, in a directory of its own."""
    return Path(shutil.copytree(workspace.bundle, tmp_path / "candidate"))


@needs_binaries
def test_up_starts_every_process_and_status_shows_them_healthy(platform, platform_workspace, workspace, capsys):
    assert {p.name: p.status for p in platform.processes} == {
        "proxy": "running", "prometheus": "running", "stable": "running", "feedback": "running"
    }  # fmt: skip
    assert main(["status", "--workspace", str(platform_workspace)]) == 0
    report = capsys.readouterr().out
    for process in platform.processes:
        assert f"{process.url}" in report
    assert report.count("health ok") == 4
    assert httpx.get(f"{platform.prometheus_url}/api/v1/targets").json()["data"]["activeTargets"]
    with pytest.raises(RuntimeError, match="already runs"):
        up(platform_workspace, str(workspace.bundle))


@needs_binaries
def test_a_killed_model_server_is_reported_and_restarted(platform, platform_workspace):
    victim = PlatformState.read(platform_workspace).process("stable").pid
    os.kill(victim, signal.SIGKILL)
    # Down (crashed, then starting again), and says why.
    status_once(platform_workspace, lambda healthy, report: not healthy and "exit code -9" in report, 10)
    report = status_once(platform_workspace, lambda healthy, report: healthy, 60)
    stable = next(line for line in report.splitlines() if line.startswith("stable"))
    assert "running" in stable and "health ok" in stable and "exit code -9, restarted 1x" in stable
    assert PlatformState.read(platform_workspace).process("stable").pid != victim


@needs_binaries
@pytest.mark.parametrize(
    "fault, failed_check", [("latency", "p99 latency"), ("errors", "error rate"), ("bad-model", "score distribution")]
)
def test_a_faulty_canary_is_rolled_back_within_two_intervals_and_no_request_fails(
    platform, platform_workspace, workspace, candidate, tmp_path, fault, failed_check
):
    config = fast_rollout()
    outcome = {}
    with Traffic(platform, workspace.card) as traffic:
        running = threading.Thread(target=lambda: outcome.update(zip(
            ("result", "report"), rollout(platform_workspace, candidate, config, tmp_path / "rollout.html", fault))))
        running.start()
        eventually(lambda: PlatformState.read(platform_workspace).canary, 60, "the canary is registered")
        if fault == "latency":
            with pytest.raises(RuntimeError, match="a rollout is already running"):
                rollout(platform_workspace, candidate, config)
        running.join(120)
    result = outcome["result"]
    decisions = read_log(result.log_path)
    assert result.outcome == "rolled back" and failed_check in result.reason, result.reason
    assert len(decisions) <= 2 and max(d["percent"] for d in decisions) < 100, decisions
    assert traffic.report.errors == {} and traffic.report.ok == traffic.report.requests > 0, traffic.report
    assert traffic.report.by_variant["canary"]["requests"] > 0
    assert traffic.report.events_unsent == 0
    state = PlatformState.read(platform_workspace)
    assert state.canary is None and state.process("canary") is None
    assert state.process("stable").bundle == workspace.bundle
    assert {httpx.post(f"{platform.proxy_url}/v1/models/recommender:predict", headers={USER_HEADER: f"u{i}"},
                       json={"instances": [{"user_id": f"u{i}"}]}).headers[VARIANT_HEADER]
            for i in range(20)} == {"stable"}  # fmt: skip
    assert "Rollout: rollback" in outcome["report"].read_text()


@needs_binaries
def test_a_sound_canary_is_promoted_to_stable_and_no_request_fails(
    platform, platform_workspace, workspace, candidate, tmp_path
):
    previous = PlatformState.read(platform_workspace).process("stable")
    with Traffic(platform, workspace.card) as traffic:
        result, report = rollout(platform_workspace, candidate, fast_rollout(), tmp_path / "rollout.html")
        time.sleep(1)  # requests after the promotion go to the new stable server
    assert result.outcome == "promoted", result.reason
    assert traffic.report.errors == {} and traffic.report.ok == traffic.report.requests > 0, traffic.report
    assert traffic.report.by_variant["canary"]["requests"] > 0 and traffic.report.by_variant["stable"]["requests"] > 0
    state = PlatformState.read(platform_workspace)
    stable = state.process("stable")
    assert stable.bundle == candidate and stable.pid != previous.pid and stable.status == "running"
    assert state.canary is None and state.process("canary") is None
    assert not alive(previous.pid)
    healthy, lines = status(platform_workspace)
    assert healthy and "bundle candidate" in lines
    eventually(lambda: scraped(platform.prometheus_url, "stable", f"127.0.0.1:{stable.port}"), 15,
               "Prometheus scrapes the promoted server as job stable")  # fmt: skip
    actions = [r["action"] for r in read_log(result.log_path)]  # a hold: an interval short of requests
    assert actions[-1] == "promote" and "advance" in actions and "rollback" not in actions, actions
    assert report.exists()


@needs_binaries
def test_down_stops_everything_and_is_idempotent(platform, platform_workspace, capsys):
    pids = [p.pid for p in PlatformState.read(platform_workspace).processes] + [platform.supervisor_pid]
    assert main(["down", "--workspace", str(platform_workspace)]) == 0
    assert not [pid for pid in pids if alive(pid)]
    assert main(["status", "--workspace", str(platform_workspace)]) == 1
    assert "no platform running" in capsys.readouterr().out
    assert "no platform running" in down(platform_workspace)


@needs_binaries
def test_down_stops_what_a_killed_supervisor_left(platform_workspace, workspace):
    state = up(platform_workspace, str(workspace.bundle), PlatformConfig(stop_grace_seconds=5))
    try:
        os.kill(state.supervisor_pid, signal.SIGKILL)
        eventually(lambda: not alive(state.supervisor_pid), 5, "the supervisor is dead")
        healthy, report = status(platform_workspace)
        assert not healthy and "supervisor" in report and "gone" in report
        assert "stopped 4 processes" in down(platform_workspace)
        assert not [p.pid for p in state.processes if alive(p.pid)]
    finally:
        down(platform_workspace)


def test_missing_binaries_are_named_with_the_command_that_installs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="sudo apt-get install haproxy prometheus"):
        up(tmp_path)


def test_the_platform_config_refuses_unknown_keys_and_its_own_process_names():
    with pytest.raises(ValueError, match="extra"):
        PlatformConfig.model_validate({"proxy_prot": 8080})
    with pytest.raises(ValueError, match="platform's own processes"):
        PlatformConfig(services=[ServiceSpec(name="stable", command=[sys.executable])])
