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


def test_rounds_are_pooled_over_every_measured_request(tmp_path):
    """Percentiles over all rounds' latencies, not an average of per-round percentiles; CPU over all requests sent."""
    import numpy as np

    from benchmarks.serve import _pooled

    runs = []
    for turn, (latencies, sent, cpu) in enumerate((([1.0] * 98 + [50.0, 60.0], 120, 0.3), ([2.0] * 100, 130, 0.2))):
        path = tmp_path / f"round-{turn}.npy"
        np.save(path, np.array(latencies))
        runs.append({
            "latencies_file": path, "sent": sent, "seconds": 5.0, "errors_by_kind": {"500": turn},
            "client_cpu_ms_per_request": 0.1 * (turn + 1), "server_cpu_seconds": cpu,
        })  # fmt: skip
    pooled = _pooled(runs)
    assert pooled["requests"] == 200 and pooled["seconds"] == 10.0 and pooled["throughput_rps"] == 20.0
    assert pooled["p50_ms"] == 2.0 and pooled["p99_ms"] == np.percentile([1.0] * 98 + [50.0, 60.0] + [2.0] * 100, 99)
    assert pooled["errors"] == 1 and pooled["errors_by_kind"] == {"500": 1}
    assert pooled["server_cpu_ms_per_request"] == 1000.0 * 0.5 / 250
    assert abs(pooled["client_cpu_ms_per_request"] - (0.1 * 120 + 0.2 * 130) / 250) < 1e-12
