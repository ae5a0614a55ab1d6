"""One supervised process of the local platform: how it starts, where it answers, what happened to it.

A child is *starting* until its health URL answers 200, then *running*. A
child that exits is *crashed* and restarted after a back-off (doubled each
time, at most ``max_restarts`` times), or *failed* when it never came up or
its restarts are spent. Stopping is SIGTERM, then SIGKILL after a grace
period; a stopped child is not restarted.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from recflow.platform.state import Crash, ProcessState, ProcessStatus

HOST = "127.0.0.1"


def probe(url: str, timeout: float = 2.0) -> str:
    """``"ok"`` when ``url`` answers 200, else what went wrong (``"HTTP 503"``, ``"unreachable: ..."``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return "ok" if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"unreachable: {getattr(error, 'reason', error)}"


def command_launcher(command: list[str], log_path: Path) -> Callable[[], subprocess.Popen]:
    """Start ``command`` with its output appended to ``log_path``."""

    def launch() -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    return launch


class Child:
    def __init__(
        self,
        name: str,
        kind: Literal["haproxy", "prometheus", "model", "service"],
        port: int,
        health_path: str,
        log_path: Path,
        launch: Callable[[], subprocess.Popen],
        restart: bool,
        bundle: Path | None = None,
    ) -> None:
        self.name, self.kind, self.port = name, kind, port
        self.health_path, self.log_path, self.launch = health_path, log_path, launch
        self.restart, self.bundle = restart, bundle
        self.process: subprocess.Popen | None = None
        self.status: ProcessStatus = "stopped"
        self.restarts = 0
        self.crashes: list[Crash] = []
        self.has_run = False  # became healthy once: a crash before that is a failed start, not restarted
        self.started_at = 0.0  # monotonic
        self.restart_at = 0.0  # monotonic, while crashed

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        self.process = self.launch()
        self.status, self.started_at = "starting", time.monotonic()

    def supervise(self, start_timeout: float, max_restarts: int, backoff: float) -> bool:
        """One look at the child: note an exit, restart when due, promote to running when healthy. Changed?"""
        if self.status in ("stopped", "failed") or self.process is None:
            return False
        now = time.monotonic()
        if self.status == "crashed":
            if now < self.restart_at:
                return False
            self.restarts += 1
            self.start()
            return True
        code = self.process.poll()
        if code is not None:
            self.crashes.append(Crash(at=dt.datetime.now(dt.timezone.utc), exit_code=code))
            if self.restart and self.has_run and self.restarts < max_restarts:
                self.status, self.restart_at = "crashed", now + backoff * 2**self.restarts
            else:
                self.status = "failed"
            return True
        if self.status == "starting":
            if probe(self.url + self.health_path, timeout=1.0) == "ok":
                self.status, self.has_run = "running", True
                return True
            if now - self.started_at > start_timeout:
                self.process.kill()  # seen as a crash at the next look
        return False

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def state(self) -> ProcessState:
        running = self.process is not None and self.status in ("starting", "running")
        return ProcessState(
            name=self.name, kind=self.kind, pid=self.process.pid if running else None, port=self.port, url=self.url,
            health_url=self.url + self.health_path, log=self.log_path, status=self.status,
            exit_code=self.crashes[-1].exit_code if self.crashes else None, restarts=self.restarts,
            crashes=self.crashes, bundle=self.bundle,
        )  # fmt: skip


def stop(children: Iterable[Child], grace: float) -> None:
    """SIGTERM every child at once, SIGKILL those still running after ``grace`` seconds."""
    children = [child for child in children if child.process is not None]
    for child in children:
        child.status = "stopped"
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
