"""Benchmark: top-k quality of the production configuration on a dataset.

    recflow bench quality --data ../shared/data/movielens-latest-small --protocol stratified [--json]

Runs the training pipeline itself (kfp.local, the pipeline's default
parameters, a fresh workspace) on the given data and protocol, so the figures
are those of exactly what the pipeline ships. Prints NDCG@10, precision@10,
recall@10 and MAP for the model, the popularity baseline (and the oracle on a
synthetic world), and the wall time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from recflow.pipeline.local import run_pipeline
from recflow.pipeline.parameters import PipelineParameters

METRICS = ("ndcg@10", "precision@10", "recall@10", "map")


def run(data: str, protocol: str, workspace: Path | None = None) -> dict:
    parameters = PipelineParameters(data_source=str(data), protocol=protocol)
    with tempfile.TemporaryDirectory(prefix="recflow-bench-quality-") as scratch:
        started = time.perf_counter()
        outputs = run_pipeline(workspace or Path(scratch), **parameters.model_dump())
        wall = time.perf_counter() - started
    results = {name: {m: r["metrics"][m] for m in METRICS} for name, r in outputs.evaluation["results"].items()}
    lines = [f"data {data}  protocol {protocol}  wall {wall:.0f} s", f"{'':<11}" + "".join(f"{m:>14}" for m in METRICS)]
    lines += [f"{name:<11}" + "".join(f"{values[m]:>14.4f}" for m in METRICS) for name, values in results.items()]
    return {"data": str(data), "protocol": protocol, "wall_seconds": round(wall, 1), "results": results, "table": "\n".join(lines)}
