"""Benchmark: the recommender stack's latency per request, for micro-batches of users.

    python -m benchmarks.stack_latency BUNDLE FEATURE_REPO [--batches 1,8,16] [--json]

e.g., for the demo bundle of ``make run`` and the workspace's feature repository:

    python -m benchmarks.stack_latency .recflow/models/<version> .recflow/feature_repo

Loads a bundle as serving does (``load_bundle``), reads the online features
of users with a click history (as ``recflow bench serve`` drives them) from
the feature repository's online store, and times
``stack.recommend(users, k, exclude={}, at)`` for each batch size. Reported
per batch: the best and the median of ``--rounds`` rounds of ``--calls``
calls each. The best round is the one least disturbed by whatever else the
machine runs; compare the best with the best.

Measured on the 2-core development VM, demo bundle, best of rounds (the VM's
speed drifts by tens of percent between runs, so these are ranges over
alternating runs): 1 / 8 / 16 users took 10.3-13.9 / 14.3-19.1 / 21.5-24.5 ms
with the frame-based stack, and 4.2-4.9 / 7.0-8.5 / 12.3-13.7 ms once users
and the item snapshot were encoded apart. On-demand views over one entity
now run once per user (or once per snapshot item, at load) instead of on
every (user, candidate) row: 10.6 -> 9.1 ms for 8 users with serving's
answer path (``docs/design.md``). A bundle with 100 candidates per user
instead of 200, 1 / 8 / 16 users: 3.7-3.8 / 5.9-6.6 / 7.7-10.0 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.serve import known_users
from recflow.features.columns import Columns
from recflow.features.online import UserFeatureReader
from recflow.features.store import get_store
from recflow.features.training_set import on_demand_transforms
from recflow.recommender.online import load_bundle
from recflow.recommender.stack import RecommenderStack


def time_calls(stack: RecommenderStack, users: Columns, k: int, at: pd.Timestamp, rounds: int, calls: int):
    """Milliseconds per call of each round (after two warm-up calls)."""
    for _ in range(2):
        stack.recommend(users, k, {}, at)
    per_call = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            stack.recommend(users, k, {}, at)
        per_call.append((time.perf_counter() - started) / calls * 1000)
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path, help="a model bundle (item snapshot, model/, ranker/, index/, stack.json)")
    parser.add_argument("feature_repo", type=Path, help="the Feast repository whose online store holds user features")
    parser.add_argument("--batches", default="1,8,16", help="users per call, comma-separated")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=30, help="calls per round")
    parser.add_argument("--at", help="request instant (default: the bundle's item snapshot instant)")
    parser.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    store = get_store(args.feature_repo)
    bundle = load_bundle(args.bundle, lambda service: on_demand_transforms(store, service))
    at = pd.Timestamp(args.at) if args.at else pd.Timestamp(bundle.card["item_snapshot_at"])
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    stack = bundle.stack
    batches = [int(size) for size in args.batches.split(",")]
    users = UserFeatureReader(store, bundle.feature_service).read(known_users(args.feature_repo, max(batches))).columns

    results = {}
    for size in batches:
        per_call = time_calls(stack, users.take(np.arange(size)), args.k, at, args.rounds, args.calls)
        results[size] = {"best_ms": min(per_call), "median_ms": statistics.median(per_call)}
    if args.json:
        print(json.dumps({"torch_threads": torch.get_num_threads(), "k": args.k, "batches": results}, indent=2))
        return
    threads = torch.get_num_threads()
    print(f"stack.recommend, k={args.k}, torch threads {threads}, {args.rounds} rounds x {args.calls} calls")
    for size, result in results.items():
        print(f"{size:>3} users: best {result['best_ms']:6.2f} ms, median {result['median_ms']:6.2f} ms per call")


if __name__ == "__main__":
    main()
