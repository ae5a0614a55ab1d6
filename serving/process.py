"""Run the model server as a child process on a loopback port: tests, benchmarks, the local platform.

The server is the real entrypoint (``python -m serving``) in its own process,
as on a cluster; :class:`ServerProcess` starts it, waits until the model
reports ready and stops it, and keeps its output in a log file to show when
start-up fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(["--bundle", ...], log_path) as server: server.url``."""

    def __init__(self, arguments: list[str], log_path: str | Path, port: int | None = None, env: dict | None = None):
        self.port = port or free_port()
        self.arguments = [*arguments, "--port", str(self.port)]
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serving", *self.arguments], stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"model server exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"model server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        # Imported here: kserve is heavy, and the local platform's supervisor uses free_port() without it.
        from serving.model import MODEL_NAME

        try:
            with urllib.request.urlopen(f"{self.url}/v1/models/{MODEL_NAME}", timeout=2) as response:
                return json.loads(response.read()).get("ready") is True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server has used so far, all its threads (Linux ``/proc``; NaN elsewhere).

        What a benchmark divides by the requests it sent: the server's CPU per
        request, which bounds its throughput on the cores it gets.
        """
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return float("nan")
        # Fields 14 and 15 of proc(5) (utime, stime, in clock ticks); [0] here is field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
