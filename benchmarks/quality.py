"""Benchmark: top-k quality of the production configuration on a dataset.

    recflow bench quality --data ../shared/data/movielens-latest-small --protocol stratified [--json]

Runs the training pipeline itself (kfp.local, a fresh workspace) on the given
data with the protocol's parameters (:func:`recflow.pipeline.parameters.parameters_for`,
plus any ``--param`` overrides), so the figures are those of exactly what the
pipeline ships. Prints NDCG@10, precision@10, recall@10 and MAP for the
model, the popularity baseline (and the oracle on a synthetic world), and,
for scale, EASE fitted on the same split (catalogues up to 20k items; not a
recflow model), then the model's NDCG@10 after each stage, the parameters
and the pipeline's wall time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from recflow.evaluation.evaluate import evaluate_recommender
from recflow.evaluation.recommenders import EaseRecommender
from recflow.pipeline import steps
from recflow.pipeline.local import run_pipeline
from recflow.pipeline.parameters import PipelineParameters

METRICS = ("ndcg@10", "precision@10", "recall@10", "map")


def run(parameters: PipelineParameters, workspace: Path | None = None) -> dict:
    """Run the pipeline with ``parameters`` (a fresh temporary workspace unless one is given)."""
    data, protocol = parameters.data_source, parameters.protocol
    with tempfile.TemporaryDirectory(prefix="recflow-bench-quality-") as scratch:
        started = time.perf_counter()
        outputs = run_pipeline(workspace or Path(scratch), **parameters.model_dump())
        wall = time.perf_counter() - started
        results = {name: {m: r["metrics"][m] for m in METRICS} for name, r in outputs.evaluation["results"].items()}
        reference = _ease(outputs.run_dir, parameters.k)
    if reference is not None:
        results["ease (ref)"] = {m: reference[m] for m in METRICS}
    # In the stack's order (the evaluation JSON lists them by name).
    stages = {stage: outputs.evaluation["stages"][stage]["ndcg@10"] for stage in ("retrieval", "ranking", "re-ranking")}
    lines = [f"data {data}  protocol {protocol}  wall {wall:.0f} s (pipeline)", f"{'':<11}" + "".join(f"{m:>14}" for m in METRICS)]
    lines += [f"{name:<11}" + "".join(f"{values[m]:>14.4f}" for m in METRICS) for name, values in results.items()]
    lines.append("model ndcg@10 after each stage: " + ", ".join(f"{stage} {value:.4f}" for stage, value in stages.items()))
    lines.append("parameters: " + parameters.model_dump_json(exclude={"gate"}))
    return {
        "data": str(data),
        "protocol": protocol,
        "parameters": parameters.model_dump(),
        "wall_seconds": round(wall, 1),
        "results": results,
        "stages": stages,
        "table": "\n".join(lines),
    }


def _ease(run_dir: Path, k: int) -> dict | None:
    """EASE on the run's own split, for scale (None for catalogues too large to invert)."""
    dataset_dir, split_dir = run_dir / "validate-data" / "dataset", run_dir / "split-events" / "split"
    held_out = steps.load_split(split_dir)
    catalog = steps.catalog_at(dataset_dir, held_out.cutoff)
    recommender = EaseRecommender()
    if len(catalog) > recommender.max_items:
        return None
    return evaluate_recommender(recommender.fit(held_out.train, catalog), held_out, k, catalog=catalog).metrics
