"""The serving benchmark's measuring tools against a real no-op server: the load generator and the server's CPU time."""

from __future__ import annotations

import json
import subprocess
import sys

from serving.process import ServerProcess


def test_the_load_generator_and_the_server_cpu_time_measure_a_real_server(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("u1\nu2\nu3\n")
    with ServerProcess(["--noop"], tmp_path / "noop.log") as server:
        idle = server.cpu_seconds()
        command = [
            sys.executable, "-m", "benchmarks.load", "--url", server.url + "/v1/models/recommender:predict",
            "--users-file", str(users), "--concurrency", "2", "--seconds", "1", "--warmup", "0.5",
        ]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        busy = server.cpu_seconds()

    assert result["errors"] == 0 and result["requests"] > 0
    assert result["sent"] > result["requests"]  # the warm-up's requests are sent, not measured
    assert result["client_cpu_ms_per_request"] > 0
    # Hundreds of requests cost the server measurable CPU (clock ticks of 10 ms).
    assert busy - idle > 0.01
