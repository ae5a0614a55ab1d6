"""Benchmark: the recommender server against a no-op KServe model, same settings, same load.

    recflow bench serve [--workspace .recflow] [--concurrency 8] [--seconds 20] [--rounds 4]

Serves the workspace's blessed bundle (training one at demo scale with the
pipeline first if there is none) with its online feature store, and drives
it from a separate process on loopback: ``concurrency`` requests in flight,
V1 bodies for known users in turn, for a fixed time after a warm-up. The
same for the floor, a no-op ``kserve.Model`` on the same server settings
(one worker, the same app, logging and metrics). All the servers run from
the start, and the load takes turns between them in ``--rounds`` rounds of
``seconds / rounds`` each, pooled per server: this VM's speed drifts over
minutes, and one server measured after the other would compare two speeds
(a floor run while the host was quiet gave 0.36 CPU ms per request, one
minutes earlier 0.47, against the same recommender). Prints p50/p99 latency,
throughput and errors for both and the ratios, and the fallbacks the
recommender counted: answers from a fallback would flatter its figures, so
they are reported, not hidden. Between the two, the same load on the
recommender's request path alone (``serving.model.RequestPathModel``:
parsing, the micro-batcher and its thread hops, fixed answers): what the
protocol and the batching cost, apart from the features and the stages.
For each server it also prints the CPU milliseconds per request of the
server process and of the load generator (warm-up requests included): the
server's figure is what bounds its throughput on the core it gets.

Where the processes run: each server on one CPU (``--cpus``, the same for
all three: by default the first this process may use), the load generator
on the others. A server's threads (event loop, feature reads, model call)
hand work to each other for every batch, and on this VM a hand-over to a
thread on the other core cost the recommender 14-25% of its CPU per
request while the floor did not notice (:mod:`serving.affinity`); the
load generator kept off the servers' core cannot take it from them
either. ``--unpinned`` leaves all of it to the OS scheduler.

Freshness, on the same recommender server after the load: for each of
``--freshness-trials`` users, a click on the first item it serves them goes
through the feedback ingestion (logged, then pushed to the online store
through the ``user_history_push`` source) and the user is asked again until
that item is gone from the answer (the click is in their history, so the
seen-item filter drops it). Click-to-served time is from handing the click to
the ingestion to that answer. The server reads a copy of the workspace's
feature repo, and the feedback log is a temporary one, so the clicks never
reach the workspace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.load import summary
from recflow.features import store
from recflow.pipeline import steps
from recflow.pipeline.registry import ModelRegistry
from recflow.recommender.stack import load_config
from serving.process import ServerProcess

V1_PATH = "/v1/models/recommender:predict"
# The acceptance bars: recommender / floor.
BARS = {"p50": 4.0, "p99": 5.0, "throughput": 0.25}
# Each server's measured seconds are split into this many rounds, the servers taking turns.
ROUNDS = 4
# The load generator's warm-up before a server's first round, and before each later one.
FIRST_WARMUP_SECONDS, WARMUP_SECONDS = 3.0, 1.0


def run(
    workspace: Path,
    bundle: str | None,
    concurrency: int,
    seconds: float,
    users: int,
    freshness_trials: int = 50,
    rounds: int = ROUNDS,
    server_cpus: set[int] | None = None,
) -> dict:
    """``server_cpus``: the CPUs every server runs on, the load generator on the rest; None: not pinned."""
    load_cpus = _load_cpus(server_cpus)
    workspace = workspace.resolve()
    bundle_dir = Path(bundle) if bundle else _blessed_bundle(workspace)
    with tempfile.TemporaryDirectory(prefix="recflow-bench-serve-") as tmp:
        tmp = Path(tmp)
        repo = Path(shutil.copytree(steps.feature_repo(workspace), tmp / "feature_repo"))
        load_users = known_users(repo, users + freshness_trials)
        users_file = tmp / "users.txt"
        users_file.write_text("\n".join(load_users[:users]) + "\n")
        settings = ["--cpus", _cpu_text(server_cpus)] if server_cpus else []  # the same for all three servers
        recommender_args = ["--bundle", str(bundle_dir), "--feature-repo", str(repo), *settings]
        with (
            ServerProcess(recommender_args, tmp / "recommender.log") as server,
            ServerProcess(["--request-path", *settings], tmp / "request-path.log") as path_server,
            ServerProcess(["--noop", *settings], tmp / "noop.log") as floor_server,
        ):
            servers = {"recommender": server, "request_path": path_server, "floor": floor_server}
            runs = _interleaved(servers, users_file, concurrency, seconds, rounds, tmp, load_cpus)
            fallbacks, batches = _server_metrics(server.url)
            freshness = _freshness(server.url + V1_PATH, store.get_store(repo), load_users[users:], tmp / "feedback.jsonl")
    recommender, request_path, floor = runs["recommender"], runs["request_path"], runs["floor"]
    ratios = {
        "p50": recommender["p50_ms"] / floor["p50_ms"],
        "p99": recommender["p99_ms"] / floor["p99_ms"],
        "throughput": recommender["throughput_rps"] / floor["throughput_rps"],
    }
    passed = {
        "p50": ratios["p50"] <= BARS["p50"],
        "p99": ratios["p99"] <= BARS["p99"],
        "throughput": ratios["throughput"] >= BARS["throughput"],
        "errors": all(run["errors"] == 0 for run in (recommender, request_path, floor)),
        "freshness": freshness["p99_ms"] < 1000.0,
    }
    result = {
        "bundle": str(bundle_dir),
        "concurrency": concurrency,
        "seconds": seconds,
        "rounds": rounds,
        "server_cpus": sorted(server_cpus) if server_cpus else None,
        "load_cpus": sorted(load_cpus) if load_cpus else None,
        "recommender": recommender,
        "request_path": request_path,
        "floor": floor,
        "ratios": ratios,
        "passed": passed,
        "fallbacks": fallbacks,
        "batches": batches,
        "candidates": load_config(bundle_dir).candidates,
        "freshness": freshness,
    }
    result["table"] = _table(result)
    return result


def default_server_cpus() -> set[int] | None:
    """The first CPU this process may use, for the servers; None when there is no other left for the load."""
    allowed = os.sched_getaffinity(0)
    return {min(allowed)} if len(allowed) > 1 else None


def _load_cpus(server_cpus: set[int] | None) -> set[int] | None:
    if not server_cpus:
        return None
    allowed = os.sched_getaffinity(0)
    if not server_cpus <= allowed:
        raise ValueError(f"server CPUs {sorted(server_cpus)} are not among those this process may use: {sorted(allowed)}")
    if not allowed - server_cpus:
        raise ValueError(f"server CPUs {sorted(server_cpus)} leave no CPU of {sorted(allowed)} for the load generator")
    return allowed - server_cpus


def _cpu_text(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def _blessed_bundle(workspace: Path) -> Path:
    current = ModelRegistry(workspace / "models").current()
    if current is None:
        from recflow.pipeline.local import run_pipeline

        print(f"no blessed model in {workspace}: training one at demo scale", file=sys.stderr)
        run_pipeline(workspace, data_source="world:demo")
        current = ModelRegistry(workspace / "models").current()
        if current is None:
            raise RuntimeError("the demo pipeline run did not bless a model")
    return Path(current["path"])


def known_users(repo: Path, limit: int) -> list[str]:
    """Users with a click history in the offline tables, hence rows in the online store."""
    files = sorted((store.offline_root(repo) / "user_history").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no user_history tables under {store.offline_root(repo)}")
    ids = pd.concat([pd.read_parquet(f, columns=["user_id"]) for f in files[-7:]])["user_id"].astype(str)
    return sorted(ids.unique())[:limit]


def _interleaved(
    servers: dict[str, ServerProcess],
    users_file: Path,
    concurrency: int,
    seconds: float,
    rounds: int,
    tmp: Path,
    load_cpus: set[int] | None = None,
) -> dict[str, dict]:
    """Each server's load figures over ``rounds`` turns of ``seconds / rounds``, pooled.

    This machine's speed drifts by tens of percent over minutes (other
    tenants of its host), so one server measured after the other compares
    two different machines; taking turns spreads the drift over all of them.
    The order rotates every round, so no server always follows the same one.
    """
    parts: dict[str, list[dict]] = {name: [] for name in servers}
    names = list(servers)
    for turn in range(rounds):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            warmup = FIRST_WARMUP_SECONDS if turn == 0 else WARMUP_SECONDS
            latencies = tmp / f"{name}-{turn}.npy"
            parts[name].append(
                _load(servers[name], users_file, concurrency, seconds / rounds, warmup, latencies, load_cpus)
            )
    return {name: _pooled(runs) for name, runs in parts.items()}


def _pooled(runs: list[dict]) -> dict:
    """One set of figures from several rounds: latency percentiles over every measured request of all of them."""
    values = np.concatenate([np.load(run.pop("latencies_file")) for run in runs])
    sent = sum(run["sent"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    errors = Counter()
    for run in runs:
        errors.update(run["errors_by_kind"])
    return {
        **summary(values, seconds, errors, sent),
        "rounds": len(runs),
        "client_cpu_ms_per_request": sum(run["client_cpu_ms_per_request"] * run["sent"] for run in runs) / sent,
        "server_cpu_ms_per_request": 1000.0 * sum(run["server_cpu_seconds"] for run in runs) / sent,
    }


def _load(
    server: ServerProcess,
    users_file: Path,
    concurrency: int,
    seconds: float,
    warmup: float,
    latencies: Path,
    cpus: set[int] | None = None,
) -> dict:
    """The load generator's figures for one round, with the server's CPU seconds over it (warm-up included)."""
    command = [
        sys.executable, "-m", "benchmarks.load", "--url", server.url + V1_PATH, "--users-file", str(users_file),
        "--concurrency", str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup),
        "--latencies", str(latencies), *(["--cpus", _cpu_text(cpus)] if cpus else []),
    ]  # fmt: skip
    cpu_before = server.cpu_seconds()
    result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    result["server_cpu_seconds"] = server.cpu_seconds() - cpu_before
    result["latencies_file"] = latencies
    return result


def _freshness(url: str, feature_store, users: list[str], log_path: Path) -> dict:
    """Click-to-served milliseconds per user: a click on their first item goes through the feedback
    ingestion (logged, then pushed to the online store), and the user is asked until the item is gone."""
    from recflow.feedback.ingest import FeedbackIngestor
    from recflow.feedback.log import FeedbackEvent, FeedbackLog

    def served(user: str) -> list[str]:
        body = json.dumps({"instances": [{"user_id": user, "k": 10}]}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return [item["item_id"] for item in json.loads(response.read())["predictions"][0]["items"]]

    times, unchanged = [], 0
    with FeedbackLog(log_path) as feedback_log:
        ingestor = FeedbackIngestor(feature_store, feedback_log).start()
        try:
            for number, user in enumerate(users):
                clicked = served(user)[0]
                click = FeedbackEvent(
                    event_id=f"freshness-{number}", user_id=user, item_id=clicked,
                    event_timestamp=pd.Timestamp.now(tz="UTC").to_pydatetime(), clicked=True,
                )
                started = time.perf_counter()
                ingestor.accept([click])
                while clicked in served(user):
                    if time.perf_counter() - started > 10:
                        unchanged += 1
                        break
                else:
                    times.append((time.perf_counter() - started) * 1000.0)
        finally:
            ingestor.stop()
    values = np.asarray(times) if times else np.asarray([np.inf])
    return {
        "trials": len(users),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
        "not_reflected_within_10s": unchanged,
    }


def _server_metrics(url: str) -> tuple[dict[str, float], dict[str, float]]:
    """The recommender's fallbacks by reason, and its model calls: count, mean users and mean ms per stage."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    fallbacks = {
        reason: float(value)
        for reason, value in re.findall(r'^recflow_fallback_total\{reason="([^"]+)"\} (\S+)$', text, re.MULTILINE)
    }
    values = {
        name: float(value)
        for name, value in re.findall(r'^(recflow_(?:stage_seconds|batch_users)_(?:sum|count)\S*) (\S+)$', text, re.MULTILINE)
    }
    calls = values.get("recflow_batch_users_count", 0.0)
    batches = {"calls": calls, "users": values.get("recflow_batch_users_sum", 0.0) / calls if calls else 0.0}
    for stage in ("features", "retrieval", "ranking", "reranking"):
        total = values.get(f'recflow_stage_seconds_sum{{stage="{stage}"}}', 0.0)
        batches[f"{stage}_ms"] = 1000.0 * total / calls if calls else 0.0
    return fallbacks, batches


def _table(result: dict) -> str:
    rec, path, floor, ratios = result["recommender"], result["request_path"], result["floor"], result["ratios"]
    mark = {True: "ok", False: "FAIL"}
    lines = [
        f"serving benchmark: concurrency {result['concurrency']}, {result['seconds']:.0f} s per server in"
        f" {result['rounds']} rounds taking turns, V1, loopback; {_placement(result)}",
        f"{'':<14}{'recommender':>14}{'request path':>14}{'no-op floor':>14}{'ratio':>9}{'bar':>9}",
        f"{'p50 ms':<14}{rec['p50_ms']:>14.2f}{path['p50_ms']:>14.2f}{floor['p50_ms']:>14.2f}{ratios['p50']:>9.2f}"
        f"{'<= ' + str(BARS['p50']):>9}  {mark[result['passed']['p50']]}",
        f"{'p99 ms':<14}{rec['p99_ms']:>14.2f}{path['p99_ms']:>14.2f}{floor['p99_ms']:>14.2f}{ratios['p99']:>9.2f}"
        f"{'<= ' + str(BARS['p99']):>9}  {mark[result['passed']['p99']]}",
        f"{'requests/s':<14}{rec['throughput_rps']:>14.1f}{path['throughput_rps']:>14.1f}{floor['throughput_rps']:>14.1f}"
        f"{ratios['throughput']:>9.2f}{'>= ' + str(BARS['throughput']):>9}  {mark[result['passed']['throughput']]}",
        f"{'errors':<14}{rec['errors']:>14d}{path['errors']:>14d}{floor['errors']:>14d}{'':>9}{'0':>9}"
        f"  {mark[result['passed']['errors']]}",
        *(
            f"{label:<14}" + "".join(f"{run[key]:>14.3f}" for run in (rec, path, floor))
            for label, key in (("server CPU ms", "server_cpu_ms_per_request"), ("client CPU ms", "client_cpu_ms_per_request"))
        ),
        "ratio and bar: recommender / no-op floor; request path: the recommender's parsing and batching, fixed answers",
        "CPU ms: CPU time per request sent, warm-up included, of the server process (all its threads) and the load generator",
        f"freshness, click to served through the feedback ingestion ({result['freshness']['trials']} users): p50 {result['freshness']['p50_ms']:.1f} ms,"
        f" p99 {result['freshness']['p99_ms']:.1f} ms (bar < 1000)  {mark[result['passed']['freshness']]}",
        f"fallbacks counted by the recommender during the load: {result['fallbacks'] or 'none'}",
        _batch_line(result["batches"], result["candidates"]),
        f"bundle: {result['bundle']}",
    ]
    return "\n".join(lines)


def _placement(result: dict) -> str:
    if not result["server_cpus"]:
        return "processes where the OS puts them"
    return f"servers on CPU {_cpu_text(set(result['server_cpus']))}, load on CPU {_cpu_text(set(result['load_cpus']))}"


def _batch_line(batches: dict[str, float], candidates: int) -> str:
    """Where the recommender's model calls went: what the latency is made of besides HTTP."""
    if not batches["calls"]:
        return "model calls under load: none"
    stages = ", ".join(f"{stage} {batches[stage + '_ms']:.1f}" for stage in ("features", "retrieval", "ranking", "reranking"))
    return (
        f"model calls under load (its warm-up too): {batches['calls']:.0f}, {batches['users']:.1f} users each"
        f" ({candidates} candidates per user); ms per call: {stages}"
    )
