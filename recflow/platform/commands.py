"""``recflow up`` / ``recflow status`` / ``recflow down``: start, show and stop the local platform.

    recflow up [--workspace .recflow] [--bundle DIR] [--config platform.yaml]
    recflow status     # one line per process; exit 1 if something is down or nothing runs
    recflow down       # idempotent

``up`` starts the supervisor (:mod:`recflow.platform.supervisor`) in its
own session and returns once every process answers its health check.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from recflow.platform.children import probe
from recflow.platform.config import PlatformConfig
from recflow.platform.state import PlatformState, alive, platform_directory, state_path
from recflow.rollout.proxy import USER_HEADER

CONFIG_FILE = "config.json"  # the PlatformConfig the supervisor runs with, beside its state
BINARIES = ("haproxy", "prometheus")  # Debian packages of the same names


def up(workspace: str | Path, bundle: str | None = None, config: PlatformConfig | None = None) -> PlatformState:
    """Start the platform on ``bundle`` (default: the workspace's blessed model); return once it is healthy."""
    from serving.__main__ import resolve_bundle

    workspace = Path(workspace).resolve()
    config = config or PlatformConfig()
    missing = [binary for binary in BINARIES if shutil.which(binary) is None]
    if missing:
        raise FileNotFoundError(f"{' and '.join(missing)} not installed: sudo apt-get install {' '.join(missing)} "
                                "(Debian packages)")  # fmt: skip
    previous = PlatformState.read(workspace)
    if previous is not None and alive(previous.supervisor_pid):
        raise RuntimeError(f"a platform already runs in {workspace} (supervisor pid {previous.supervisor_pid}): "
                           "`recflow down` stops it")  # fmt: skip
    if previous is not None:
        down(workspace)  # what a supervisor killed with -9 left running
    stable = resolve_bundle(bundle, workspace).resolve()
    directory = platform_directory(workspace)
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    state_path(workspace).unlink(missing_ok=True)
    supervisor_log = directory / "logs" / "supervisor.log"
    with supervisor_log.open("ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "recflow.platform.supervisor", "--workspace", str(workspace),
             "--bundle", str(stable), "--config", str(directory / CONFIG_FILE)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    patience = config.start_timeout_seconds + 30
    deadline = time.monotonic() + patience
    while True:
        state = PlatformState.read(workspace)
        if state is not None and state.status == "running":
            return state
        if supervisor.poll() is not None or (state is not None and state.status == "failed"):
            supervisor.wait(config.stop_grace_seconds + 10)  # it stops what it started before exiting
            reason = state.error if state is not None and state.error else _tail(supervisor_log)
            raise RuntimeError(f"the platform did not start:\n{reason}")
        if time.monotonic() > deadline:
            down(workspace)
            raise TimeoutError(f"the platform was not up after {patience:.0f} s; see {directory / 'logs'}")
        time.sleep(0.2)


def describe_up(state: PlatformState) -> str:
    """What ``recflow up`` prints: where to send requests, where to look."""
    lines = [
        f"recflow platform up in {state.workspace} (supervisor pid {state.supervisor_pid})",
        f"  proxy        {state.proxy_url}  (the model server's V1/V2 API; header {USER_HEADER}: <user id>)",
        f"  prometheus   {state.prometheus_url}",
    ]
    lines += [f"  {p.name:<12} {p.url}" + (f"  bundle {p.bundle}" if p.bundle else "")
              for p in state.processes if p.kind in ("model", "service")]  # fmt: skip
    lines.append(f"  logs         {platform_directory(state.workspace) / 'logs'}")
    return "\n".join(lines)


def status(workspace: str | Path) -> tuple[bool, str]:
    """Whether everything is up, and one line per process (status, pid, URL, health check, crashes)."""
    workspace = Path(workspace).resolve()
    state = PlatformState.read(workspace)
    if state is None:
        return False, f"no platform in {workspace}: `recflow up` starts one"
    if not alive(state.supervisor_pid):
        if state.status in ("stopped", "failed"):
            detail = f": {state.error}" if state.error else ""
            return False, f"no platform running in {workspace} (the last one {state.status}{detail})"
        return False, (f"the platform's supervisor (pid {state.supervisor_pid}) is gone: nothing is supervised; "
                       "`recflow down` stops what is left, `recflow up` starts it again")  # fmt: skip
    lines = [f"platform {state.status} in {workspace} since {state.started_at.astimezone():%H:%M:%S} "
             f"(supervisor pid {state.supervisor_pid})"]  # fmt: skip
    if state.canary is not None:
        lines.append(f"rollout: canary {state.canary.bundle} at {state.canary.percent}% "
                     f"(rollout pid {state.canary.owner_pid})")  # fmt: skip
    healthy = state.status == "running"
    for process in state.processes:
        health = probe(process.health_url) if process.status in ("starting", "running") else "-"
        healthy &= process.status == "running" and health == "ok"
        line = f"{process.name:<11} {process.status:<8} pid {process.pid or '-':<7} {process.url:<23} health {health}"
        if process.bundle is not None:
            line += f"  bundle {process.bundle.name}"
        if process.crashes:
            line += f"  ({process.describe_crashes()}; log {process.log})"
        lines.append(line)
    return healthy, "\n".join(lines)


def down(workspace: str | Path) -> str:
    """Stop the platform: the supervisor stops its children (SIGTERM, then SIGKILL after the grace period)."""
    workspace = Path(workspace).resolve()
    state = PlatformState.read(workspace)
    if state is None:
        return f"no platform in {workspace}"
    config_file = platform_directory(workspace) / CONFIG_FILE
    grace = PlatformConfig.model_validate_json(config_file.read_text()).stop_grace_seconds
    was_running = alive(state.supervisor_pid)
    if was_running:
        os.kill(state.supervisor_pid, signal.SIGTERM)
        _wait_gone([state.supervisor_pid], grace + 10)
    # The supervisor leads its process group: whatever outlived it (it was killed with -9, or hung) goes too.
    group = state.supervisor_pid
    left = [pid for pid in (group, *(p.pid for p in state.processes if p.pid)) if alive(pid) and _group(pid) == group]
    leftovers = len(left)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
            left = _wait_gone(left, grace)
    state = PlatformState.read(workspace) or state
    if state.status not in ("stopped", "failed"):
        processes = [p.model_copy(update={"status": "stopped", "pid": None}) for p in state.processes]
        stopped = state.model_copy(update={"status": "stopped", "processes": processes, "canary": None})
        stopped.write(state_path(workspace))
    if was_running:
        return f"platform in {workspace} stopped"
    if leftovers:
        return f"stopped {leftovers} processes a dead supervisor left in {workspace}"
    return f"no platform running in {workspace}"


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The ``pids`` still alive after waiting up to ``timeout`` seconds for them to exit."""
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def simulate(workspace: str | Path, config, ground_truth: str | Path | None = None):
    """``recflow simulate``: the world's users against the running platform's proxy, feedback to its ingestion.

    The oracle is that of the world the stable model was trained on (its
    model card), unless ``ground_truth`` names a saved one.
    """
    import json

    from recflow.feedback.simulator import Simulator, ground_truth_for

    workspace = Path(workspace).resolve()
    state = PlatformState.read(workspace)
    if state is None or state.status != "running" or not alive(state.supervisor_pid):
        raise RuntimeError(f"no platform running in {workspace}: `recflow up` starts one")
    feedback, stable = state.process("feedback"), state.process("stable")
    if feedback is None:
        raise RuntimeError("the platform runs no feedback service (a service named 'feedback' in its config)")
    card = json.loads((stable.bundle / "model_card.json").read_text())
    return Simulator(config, ground_truth_for(card, ground_truth), state.proxy_url, feedback.url).run()
