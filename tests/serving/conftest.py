"""Real model servers over the trained tiny workspace (tests/conftest.py), shared by the serving tests.

Servers are the real entrypoint (``python -m serving``) in child processes on
free loopback ports; tests talk HTTP to them, with the request instant pinned
to the workspace's (an hour after the end of the data).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from serving.process import ServerProcess, free_port

# The revision name Knative gives the server in K_REVISION on a cluster.
REVISION = "recommender-predictor-00001"


def _serving_config(path: Path, workspace, **settings) -> Path:
    """A serving config pinned to the workspace's request instant, with ``settings`` on top."""
    path.write_text(yaml.safe_dump({"request_time": workspace.request_time.isoformat(), **settings}))
    return path


@pytest.fixture
def serving_config(workspace, tmp_path):
    """``serving_config(**settings)`` -> the path of a config file for a server of this test."""
    return lambda **settings: _serving_config(tmp_path / "serving.yaml", workspace, **settings)


@pytest.fixture(scope="session")
def server(workspace, tmp_path_factory):
    """The recommender over the workspace's SQLite online store, as a Knative revision runs it (``K_REVISION``)."""
    tmp = tmp_path_factory.mktemp("server")
    config = _serving_config(tmp / "serving.yaml", workspace, max_k=50, max_users_per_request=16)
    arguments = ["--bundle", str(workspace.bundle), "--feature-repo", str(workspace.feature_repo), "--config", str(config)]
    with ServerProcess(arguments, tmp / "server.log", env={"K_REVISION": REVISION}) as process:
        yield process


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        # Saved on shutdown and loaded on start: a restart brings the data back.
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "3600 1", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    redis = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    redis.start()
    yield redis
    redis.stop()
