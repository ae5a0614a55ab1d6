"""Closed-loop HTTP load: N requests in flight for a fixed time, latencies recorded.

    python -m benchmarks.load --url http://127.0.0.1:8080/v1/models/recommender:predict \\
        --users-file users.txt --concurrency 8 --seconds 20

Runs in its own process (``recflow bench serve`` starts it), so the client's
CPU is not the server's. Each of ``concurrency`` workers sends a V1 request
for the next user of the file, waits for the answer and sends the next one,
over one kept-alive connection each. Prints one JSON object: per-request
latencies summarised, throughput, errors by kind (non-200 statuses and
connection failures both count), and the requests sent in all, warm-up
included (``sent``: what the server's CPU time is divided by) with this
client's own CPU milliseconds per request. ``--latencies`` saves the
measured latencies too, so that several runs can be pooled.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter

import aiohttp
import numpy as np

from serving.affinity import cpu_list, pin


async def _drive(
    url: str, users: list[str], concurrency: int, seconds: float, warmup: float, latencies_file: str | None = None
) -> dict:
    next_user = itertools.cycle(users).__next__
    latencies: list[float] = []
    errors: Counter = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Content-Type": "application/json"}
    sent = 0
    cpu_started = time.process_time()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def worker() -> None:
            nonlocal sent
            while (now := time.perf_counter()) < stop_at:
                sent += 1
                body = json.dumps({"instances": [{"user_id": next_user(), "k": 10}]})
                try:
                    async with session.post(url, data=body) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError as error:
                    status = type(error).__name__
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append(done - now)
                    if status != 200:
                        errors[str(status)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    client_cpu = time.process_time() - cpu_started
    values = np.asarray(latencies, dtype=np.float64) * 1000.0
    if latencies_file is not None:
        np.save(latencies_file, values)
    return {
        **summary(values, seconds, errors, sent),
        "client_cpu_ms_per_request": 1000.0 * client_cpu / sent if sent else float("nan"),
    }


def summary(latencies_ms: np.ndarray, seconds: float, errors: Counter, sent: int) -> dict:
    """The figures of measured requests (latencies in ms): one run's, or several runs' pooled."""
    measured = len(latencies_ms)
    return {
        "requests": measured,
        "seconds": seconds,
        "throughput_rps": measured / seconds,
        "p50_ms": float(np.percentile(latencies_ms, 50)) if measured else float("nan"),
        "p99_ms": float(np.percentile(latencies_ms, 99)) if measured else float("nan"),
        "mean_ms": float(latencies_ms.mean()) if measured else float("nan"),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "sent": sent,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--users-file", required=True, help="one user id per line")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--latencies", help="also save the measured latencies (ms, .npy), to pool several runs")
    parser.add_argument("--cpus", type=cpu_list, help="run on these CPUs only, e.g. 1 (default: wherever the OS puts it)")
    args = parser.parse_args(argv)
    if args.cpus:
        pin(args.cpus)
    users = [line.strip() for line in open(args.users_file) if line.strip()]
    print(json.dumps(asyncio.run(_drive(args.url, users, args.concurrency, args.seconds, args.warmup, args.latencies))))


if __name__ == "__main__":
    main()
