"""The feedback service as the platform runs it: the real entrypoint in a child process on a free port.

``start_feedback_service(repo, log_path)`` starts one and waits until it is
healthy; every service a test started is stopped after it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from recflow.feedback.log import FeedbackEvent
from serving.process import free_port


class Service:
    def __init__(self, repo, log_path, log_file):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "recflow.feedback", "--feature-repo", str(repo), "--log", str(log_path),
                   "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self._healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the feedback service on port {self.port} is not healthy after 60 s")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        assert self.process.poll() is None, "the feedback service exited"
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def post(self, batch: list[FeedbackEvent]) -> dict:
        body = {"events": [event.model_dump(mode="json") for event in batch]}
        response = httpx.post(self.url + "/v1/feedback", json=body, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def health(self) -> dict:
        return httpx.get(self.url + "/healthz", timeout=5).json()

    def metric(self, name: str) -> float:
        lines = httpx.get(self.url + "/metrics", timeout=5).text.splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(20)


@pytest.fixture
def start_feedback_service(tmp_path):
    services = []

    def start(repo, log_path) -> Service:
        output = open(tmp_path / f"feedback-service-{len(services)}.log", "ab")
        services.append((Service(repo, log_path, output), output))
        return services[-1][0]

    yield start
    for service, output in services:
        service.stop()
        output.close()
