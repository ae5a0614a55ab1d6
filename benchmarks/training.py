"""Benchmark: training throughput for 1 and N processes, and the time to reach the quality bar.

    recflow bench train --scale demo [--nproc 1,2] [--max-epochs 3] [--workspace DIR] [--json]

Builds the scale's training set once with the pipeline's own steps (world,
validation, time split, features, materialization, point-in-time training
set; kept in the workspace), then trains the pipeline's default retrieval
configuration through ``torchrun`` (the train step's launcher) with each
process count, for at least ``THROUGHPUT_EPOCHS`` epochs, and reports
samples/s and wall time. Then, with the largest
process count, it trains 1, 2, ... ``max_epochs`` epochs and scores each
model's retrieval top-10 (the ANN index, as the stack's first stage) against
the popularity baseline and the world's oracle: the time to the bar is the
training time of the first model that beats popularity's NDCG@10 by
``LIFT_OVER_POPULARITY`` and reaches ``SHARE_OF_ORACLE`` of the oracle's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from recflow.data.dataset import Dataset
from recflow.data.world import GroundTruth
from recflow.evaluation.evaluate import evaluate_recommender
from recflow.evaluation.recommenders import OracleRecommender, PopularityRecommender
from recflow.features import store
from recflow.features.training_set import TrainingSetConfig, entity_features_as_of
from recflow.pipeline import steps
from recflow.pipeline.parameters import DEFAULTS
from recflow.retrieval.evaluate import IndexRecommender
from recflow.retrieval.index import ItemIndex
from recflow.training.config import TrainConfig
from recflow.training.features import FeatureSpec
from recflow.training.inference import TrainedModel
from recflow.training.launch import run_torchrun

# The synthetic-world bar of the models issue: the stack beats popularity's
# NDCG@10 by 50% and reaches 70% of the oracle's.
LIFT_OVER_POPULARITY = 1.5
SHARE_OF_ORACLE = 0.7
K = 10
THROUGHPUT_EPOCHS = 2


def prepare(scale: str, workspace: Path) -> Path:
    """The pipeline's steps up to the training set, run once per workspace."""
    ready = workspace / "training_set" / steps.TRAINING_SET_INFO
    if not ready.is_file():
        steps.ingest(f"world:{scale}", workspace / "raw")
        steps.validate(workspace / "raw", workspace / "dataset")
        steps.split(workspace / "dataset", workspace / "split", "time", DEFAULTS.test_days)
        steps.compute_feature_tables(workspace / "dataset", workspace / "split", workspace)
        steps.apply_and_materialize(workspace / "dataset", workspace)
        config = TrainingSetConfig(feature_service=DEFAULTS.feature_service, seed=DEFAULTS.seed)
        steps.training_set(workspace / "dataset", workspace / "split", workspace, workspace / "training_set", config)
    return workspace / "training_set" / steps.TRAINING_SET_FILE


def run(scale: str, workspace: Path, processes: list[int], max_epochs: int) -> dict:
    workspace = workspace.resolve()
    data = prepare(scale, workspace)
    spec = FeatureSpec.infer_from_parquet(data)
    base = TrainConfig(
        epochs=DEFAULTS.epochs,
        batch_size=DEFAULTS.batch_size,
        learning_rate=DEFAULTS.learning_rate,
        embedding_dim=DEFAULTS.embedding_dim,
        seed=DEFAULTS.seed,
    )

    def fit(config: TrainConfig, nproc: int, out: Path) -> tuple[dict, float]:
        started = time.perf_counter()
        metrics = run_torchrun(data, spec, out, config, nproc_per_node=nproc)
        return metrics, time.perf_counter() - started

    throughput = {}
    with tempfile.TemporaryDirectory(prefix="recflow-bench-train-") as scratch:
        for nproc in processes:
            # At least two epochs, so that the rate is not dominated by the first steps.
            config = base.model_copy(update={"epochs": max(base.epochs, THROUGHPUT_EPOCHS)})
            metrics, wall = fit(config, nproc, Path(scratch) / f"throughput-{nproc}")
            throughput[nproc] = {
                "samples_per_second": round(metrics["samples_per_second"]),
                "train_seconds": round(metrics["train_loop_seconds"], 1),
                "wall_seconds_with_startup": round(wall, 1),
            }
        score = _retrieval_scorer(workspace)
        curve = []
        for epochs in range(1, max_epochs + 1):
            out = Path(scratch) / f"epochs-{epochs}"
            metrics, wall = fit(base.model_copy(update={"epochs": epochs}), max(processes), out)
            curve.append({"epochs": epochs, "train_seconds": round(metrics["train_loop_seconds"], 1), "ndcg@10": score(out)})
    baselines = score.baselines
    bar = max(LIFT_OVER_POPULARITY * baselines["popularity"], SHARE_OF_ORACLE * baselines["oracle"])
    reached = next((point for point in curve if point["ndcg@10"] >= bar), None)
    first = throughput[processes[0]]["samples_per_second"]
    lines = [f"scale {scale}: {metrics['rows']} training rows, config {base.model_dump_json(include=set(TrainConfig.model_fields) - {'device', 'log_every_steps', 'checkpoint_every_steps'})}"]
    lines += [
        f"  {nproc} process(es): {values['samples_per_second']:>9} samples/s ({values['samples_per_second'] / first:.2f}x)"
        f"  {values['train_seconds']:>6} s training, {values['wall_seconds_with_startup']:>6} s with start-up"
        for nproc, values in throughput.items()
    ]
    lines.append(f"  bar: retrieval NDCG@10 >= {bar:.4f} (popularity {baselines['popularity']:.4f}, oracle {baselines['oracle']:.4f})")
    lines += [f"  {p['epochs']} epoch(s) on {max(processes)} processes: {p['train_seconds']:>6} s, NDCG@10 {p['ndcg@10']:.4f}" for p in curve]
    lines.append(
        f"  time to the bar: {reached['train_seconds']} s ({reached['epochs']} epoch(s))" if reached else "  the bar was not reached"
    )
    return {
        "scale": scale,
        "rows": metrics["rows"],
        "throughput": throughput,
        "baselines": baselines,
        "bar": bar,
        "curve": curve,
        "seconds_to_bar": reached["train_seconds"] if reached else None,
        "table": "\n".join(lines),
    }


def _retrieval_scorer(workspace: Path):
    """A function: model directory -> retrieval NDCG@10 on the held-out days; its ``baselines`` attribute holds popularity's and the oracle's."""
    held_out = steps.load_split(workspace / "split")
    catalog = [str(item) for item in steps.catalog_at(workspace / "dataset", held_out.cutoff)]
    feature_store = store.get_store(steps.feature_repo(workspace))
    users = entity_features_as_of(
        feature_store, DEFAULTS.feature_service, "user", sorted(held_out.test["user_id"].unique()), held_out.cutoff
    )
    items = entity_features_as_of(feature_store, DEFAULTS.feature_service, "item", catalog, held_out.cutoff)

    def score(model_dir: Path) -> float:
        model = TrainedModel.load(model_dir)
        vectors, bias = model.item_vectors(items)
        index = ItemIndex.build(items["item_id"].astype(str).tolist(), vectors, bias)
        recommender = IndexRecommender(index, users["user_id"].astype(str).tolist(), model.user_vectors(users))
        return round(evaluate_recommender(recommender, held_out, K, catalog=catalog).metrics[f"ndcg@{K}"], 4)

    truth = GroundTruth.load(Dataset(workspace / "dataset").ground_truth_dir)
    baselines = {
        "popularity": PopularityRecommender().fit(held_out.train, catalog),
        "oracle": OracleRecommender(truth, truth.day_index(held_out.cutoff), catalog),
    }
    score.baselines = {
        name: round(evaluate_recommender(rec, held_out, K, catalog=catalog).metrics[f"ndcg@{K}"], 4)
        for name, rec in baselines.items()
    }
    return score
