"""The training pipeline's steps as plain functions over directories.

Each KFP component in ``components/`` is a thin shell that calls one of these
with its artifacts' paths, so the same code runs under ``kfp.local``, on a
cluster, and directly from tests. Steps never write a partial output: a step
that fails leaves nothing for the next one to read.

Shared state that outlives a run (the Feast repository with its offline
tables, registry and online store; the registry of blessed models) lives in
the *workspace*, a directory given to every step that needs it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow.data.dataset import FEEDBACK_FOLDS, GROUND_TRUTH_DIR, Dataset, write_dataset
from recflow.data.validation import DataValidationError, validate_dataset
from recflow.evaluation.protocols import Split, stratified_split, time_split
from recflow.features import compute, store
from recflow.features.training_set import TrainingSetConfig, build_training_set

log = logging.getLogger(__name__)

RAW_TABLES = ("events", "items", "users")
SOURCE_FILE = "source.json"
SPLIT_FILES = {"train": "train.parquet", "test": "test.parquet", "info": "split.json"}
TRAINING_SET_FILE = "training_set.parquet"
TRAINING_SET_INFO = "training_set.json"


def feature_repo(workspace: str | Path) -> Path:
    return Path(workspace) / "feature_repo"


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


# --- ingest and validate ---------------------------------------------------------------------


def ingest(source: str, out_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Bring a data source into ``out_dir`` as raw canonical tables (not yet validated).

    ``source`` is ``world:<scale>`` (the synthetic world, seeded), a MovieLens
    file or directory, or a recflow dataset directory. Values are kept as read,
    so a corrupted file reaches validation, which names what is wrong.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any]
    if source.startswith("world:"):
        from recflow.data.world import generate_world, world_config

        config = world_config(source.split(":", 1)[1], seed=seed)
        world = generate_world(config)
        tables = {"events": world.events, "items": world.items, "users": world.users}
        world.ground_truth.save(out / GROUND_TRUTH_DIR)
        info = {"source": "world", "scale": source.split(":", 1)[1], "seed": seed}
    elif Path(source, "manifest.json").is_file():
        dataset = Dataset(Path(source))
        # Partitions are read one by one and concatenated as pandas frames, so a
        # partition with a corrupted column type reaches validation instead of
        # failing Arrow's schema merge here.
        partitions = [pd.read_parquet(dataset.event_partition(day)) for day in dataset.days()]
        tables = {
            "events": pd.concat(partitions, ignore_index=True) if partitions else pd.DataFrame(),
            "items": pd.read_parquet(dataset.path / "items.parquet"),
            "users": pd.read_parquet(dataset.path / "users.parquet"),
        }
        if dataset.ground_truth_dir is not None:
            shutil.copytree(dataset.ground_truth_dir, out / GROUND_TRUTH_DIR)
        info = {"source": "dataset", "path": str(dataset.path), "manifest": dataset.manifest}
        # A dataset drawn from a synthetic world plus its live feedback
        # (recflow.pipeline.retrain) keeps the world's name, so its model card
        # says whose users the simulator can play, and the feedback-log position
        # it holds, so the next retraining folds in only what came after.
        info.update({key: dataset.manifest[key] for key in ("scale", "seed", FEEDBACK_FOLDS) if key in dataset.manifest})
    else:
        from recflow.data.movielens import read_movielens

        raw = read_movielens(source)
        tables = {"events": raw.events, "items": raw.items, "users": raw.users}
        info = {"source": "movielens", "format": raw.format, "path": str(source)}
    for name in RAW_TABLES:
        tables[name].to_parquet(out / f"{name}.parquet", index=False)
    info["rows"] = {name: len(tables[name]) for name in RAW_TABLES}
    _write_json(out / SOURCE_FILE, info)
    log.info("ingested %s: %s", source, info["rows"])
    return info


def validate(raw_dir: str | Path, out_dir: str | Path, report_path: str | Path | None = None) -> dict[str, Any]:
    """Validate raw tables; write the typed dataset only if every check passes.

    Raises :class:`DataValidationError` naming the rows and columns at fault;
    the report is written either way, the dataset only on success.
    """
    raw = Path(raw_dir)
    tables = {name: pd.read_parquet(raw / f"{name}.parquet") for name in RAW_TABLES}
    report, clean = validate_dataset(tables["events"], tables["items"], tables["users"])
    if report_path is not None:
        Path(report_path).write_text("# Data validation\n\n" + report.to_markdown() + "\n")
    if clean is None:
        raise DataValidationError(report)
    source = json.loads((raw / SOURCE_FILE).read_text())

    def copy_ground_truth(tmp: Path) -> None:
        if (raw / GROUND_TRUTH_DIR).is_dir():
            shutil.copytree(raw / GROUND_TRUTH_DIR, tmp / GROUND_TRUTH_DIR)

    dataset = write_dataset(
        out_dir, clean.events, clean.items, clean.users, manifest=source, extra=copy_ground_truth, overwrite=True
    )
    log.info("validated: %s", report.counts)
    return dataset.manifest


# --- split and features ----------------------------------------------------------------------


def split(
    dataset_dir: str | Path, out_dir: str | Path, protocol: str, test_days: int, start_date: str = "", end_date: str = ""
) -> dict[str, Any]:
    """Split the event log by the evaluation protocol (``time`` or ``stratified``).

    ``start_date`` / ``end_date`` (ISO dates, inclusive; empty = unbounded)
    restrict the days the run trains and evaluates on.
    """
    start = dt.date.fromisoformat(start_date) if start_date else None
    end = dt.date.fromisoformat(end_date) if end_date else None
    events = Dataset(Path(dataset_dir)).read_events(start=start, end=end)
    if events.empty:
        raise ValueError(f"no events between {start_date or 'the start'} and {end_date or 'the end'}")
    if protocol == "time":
        result = time_split(events, test_days)
    elif protocol == "stratified":
        result = stratified_split(events)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; choose 'time' or 'stratified'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.train.to_parquet(out / SPLIT_FILES["train"], index=False)
    result.test.to_parquet(out / SPLIT_FILES["test"], index=False)
    info = {
        **result.summary(),
        "protocol": protocol,
        "cutoff": result.cutoff.isoformat(),
        "start_date": start_date,
        "end_date": end_date,
    }
    _write_json(out / SPLIT_FILES["info"], info)
    return info


def load_split(split_dir: str | Path) -> Split:
    folder = Path(split_dir)
    info = json.loads((folder / SPLIT_FILES["info"]).read_text())
    return Split(
        protocol=info["protocol"],
        train=pd.read_parquet(folder / SPLIT_FILES["train"]),
        test=pd.read_parquet(folder / SPLIT_FILES["test"]),
        cutoff=pd.Timestamp(info["cutoff"]),
    )


def compute_feature_tables(dataset_dir: str | Path, split_dir: str | Path, workspace: str | Path) -> dict[str, Any]:
    """Bring the workspace's offline feature tables up to date with the event log.

    Features read only what the protocol lets the model see: under the time
    protocol the point-in-time join already hides every event after a row's
    timestamp, so the whole log feeds them (as in production); under the
    stratified protocol the held-out events are removed, since a random split
    has no instant that separates them.
    """
    repo = store.prepare_repo(feature_repo(workspace))
    info = json.loads((Path(split_dir) / SPLIT_FILES["info"]).read_text())
    events_filter = None
    if info["protocol"] == "stratified":
        events_filter = set(pd.read_parquet(Path(split_dir) / SPLIT_FILES["train"], columns=["event_id"])["event_id"])
    result = compute.compute_features(Dataset(Path(dataset_dir)), store.offline_root(repo), events_filter)
    return result.to_dict()


def apply_and_materialize(dataset_dir: str | Path, workspace: str | Path) -> dict[str, Any]:
    """``feast apply`` the definitions, then load the newest snapshots into the online store."""
    repo = feature_repo(workspace)
    store.feast_apply(repo)
    last_day = Dataset(Path(dataset_dir)).days()[-1]
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    result = store.materialize(repo, end)
    log.info("materialized up to %s: %s", end.isoformat(), result)
    return {"materialized_until": end.isoformat(), **result}


def training_set(
    dataset_dir: str | Path, split_dir: str | Path, workspace: str | Path, out_dir: str | Path, config: TrainingSetConfig
) -> dict[str, Any]:
    """Labels from the training split, joined point-in-time with the feature service."""
    feature_store = store.get_store(feature_repo(workspace))
    train = pd.read_parquet(Path(split_dir) / SPLIT_FILES["train"])
    catalog = Dataset(Path(dataset_dir)).read_items()["item_id"].to_numpy()
    frame = build_training_set(feature_store, train, catalog, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / TRAINING_SET_FILE, index=False)
    info = {
        "rows": len(frame),
        "positives": int(frame["label"].sum()),
        "feature_service": config.feature_service,
        "features": [c for c in frame.columns if c not in ("user_id", "item_id", "event_timestamp", "label")],
        "config": config.model_dump(),
    }
    _write_json(out / TRAINING_SET_INFO, info)
    return info


def catalog_at(dataset_dir: str | Path, instant: pd.Timestamp) -> np.ndarray:
    """Items that exist at ``instant``: a model cannot be asked for items not yet created."""
    items = Dataset(Path(dataset_dir)).read_items()
    return items.loc[items["created_at"] <= instant, "item_id"].to_numpy()


# --- train, evaluate, export -----------------------------------------------------------------

MODEL_INFO = "model_info.json"
EVALUATION_FILE = "evaluation.json"


def train(
    training_set_dir: str | Path,
    model_dir: str | Path,
    config,
    nproc_per_node: int,
    launcher: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Launch the one training entrypoint through ``torchrun``.

    What is trained and how is decided here; ``launcher`` only runs it:
    :func:`recflow.training.launch.run_torchrun` on this machine, or a
    Kubeflow TrainJob when ``$RECFLOW_TRAINJOB`` configures one (the
    cluster's pipeline pods have it; :mod:`recflow.kubernetes.trainjob`).
    """
    from recflow.kubernetes.trainjob import from_environment
    from recflow.training.features import FeatureSpec
    from recflow.training.launch import run_torchrun

    launch = launcher or from_environment() or run_torchrun
    source = Path(training_set_dir)
    data = source / TRAINING_SET_FILE
    spec = FeatureSpec.infer_from_parquet(data)
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    metrics = launch(data, spec, out, config, nproc_per_node=nproc_per_node, checkpoint_dir=checkpoints, max_restarts=1)
    shutil.rmtree(checkpoints, ignore_errors=True)
    info = json.loads((source / TRAINING_SET_INFO).read_text())
    _write_json(out / MODEL_INFO, {"feature_service": info["feature_service"], "training_set": info})
    return metrics


RANKING_SET_FILE = "ranking_set.parquet"
RANKER_INFO = "ranker_info.json"


def ranking_set(
    dataset_dir: str | Path,
    split_dir: str | Path,
    workspace: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    config: TrainingSetConfig,
) -> dict[str, Any]:
    """The ranker's training set: labelled rows with the ranking feature service and the retrieval score.

    Negatives follow ``config.negatives`` (random catalogue items by default:
    the ranker orders retrieval's candidates, which are catalogue items, not
    logged exposures); the retrieval score of each row comes from the trained
    two-tower model, as it will at serving time.
    """
    from recflow.training.inference import TrainedModel

    feature_store = store.get_store(feature_repo(workspace))
    train = pd.read_parquet(Path(split_dir) / SPLIT_FILES["train"])
    catalog = Dataset(Path(dataset_dir)).read_items()["item_id"].to_numpy()
    frame = build_training_set(feature_store, train, catalog, config)
    retrieval = TrainedModel.load(model_dir)
    item_vectors, item_bias = retrieval.item_vectors(frame)
    frame["retrieval_score"] = (retrieval.user_vectors(frame) * item_vectors).sum(axis=1) + item_bias
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / RANKING_SET_FILE, index=False)
    info = {"rows": len(frame), "positives": int(frame["label"].sum()), "negatives": config.negatives, "feature_service": config.feature_service}
    _write_json(out / TRAINING_SET_INFO, info)
    return info


def train_ranker(ranking_set_dir: str | Path, dataset_dir: str | Path, ranker_dir: str | Path, config) -> dict[str, Any]:
    """Train the ranking model (one process) on the ranking set; save it with its feature service.

    The rows of one user in ten (by a stable hash of the id) are held out, and
    the metrics hold the ranker's AUC and log loss on them (``validation``)
    beside those on its training rows (``train``).
    """
    from recflow.ranking.model import train_ranker as fit

    source = Path(ranking_set_dir)
    frame = pd.read_parquet(source / RANKING_SET_FILE)
    items = Dataset(Path(dataset_dir)).read_items()
    held_out = frame["user_id"].astype(str).map(lambda user: zlib.crc32(user.encode()) % 10 == 0).to_numpy()
    ranker, _, metrics = fit(
        frame[~held_out].reset_index(drop=True),
        config,
        validation=frame[held_out].reset_index(drop=True),
        item_categories=dict(zip(items["item_id"], items["category"])),
    )
    out = Path(ranker_dir)
    ranker.save(out)
    info = json.loads((source / TRAINING_SET_INFO).read_text())
    _write_json(out / RANKER_INFO, {"feature_service": info["feature_service"], "ranking_set": info, "metrics": metrics})
    return metrics


def evaluate(
    model_dir: str | Path,
    ranker_dir: str | Path,
    dataset_dir: str | Path,
    split_dir: str | Path,
    workspace: str | Path,
    out_dir: str | Path,
    gate,
    k: int = 10,
    stack_config=None,
    candidate_depths: Sequence[int] = (),
) -> dict[str, Any]:
    """Score the candidate stack, the popularity baseline, the last blessed stack and (on
    the synthetic world) the oracle on the same held-out data, then decide the blessing.

    The candidate is the full stack (retrieval -> ranking -> re-ranking); its
    retrieval stage alone is scored too (recall@100/200 of the candidates), and
    a stage report shows what each stage changes.

    ``candidate_depths``: numbers of candidates per user to score the stack
    with, in place of ``stack_config.candidates``; the stack keeps the fewest
    whose NDCG@k is within 1% of the most's (:func:`fewest_candidates`), and
    that stack is the candidate the gate judges and the bundle serves.

    The last blessed model is re-scored on this run's split rather than trusted
    from its own card: metrics from another split or dataset do not compare.
    """
    from recflow.data.world import GroundTruth
    from recflow.evaluation.evaluate import evaluate_recommender
    from recflow.evaluation.gate import decide
    from recflow.evaluation.recommenders import OracleRecommender, PopularityRecommender
    from recflow.evaluation.report import render_html, render_markdown
    from recflow.features.training_set import entity_features_as_of, on_demand_transforms
    from recflow.pipeline.registry import ModelRegistry
    from recflow.recommender.stack import StackConfig, StackRecommender, build_stack, fewest_candidates, load_config
    from recflow.reranking.report import render_html as stage_html
    from recflow.reranking.report import render_markdown as stage_markdown
    from recflow.reranking.report import stage_report
    from recflow.retrieval.evaluate import IndexRecommender, retrieval_recall

    stack_config = stack_config or StackConfig()
    held_out = load_split(split_dir)
    # The ranking service is a superset of the retrieval one: one read serves both stages.
    service = json.loads((Path(ranker_dir) / RANKER_INFO).read_text())["feature_service"]
    catalog = catalog_at(dataset_dir, held_out.cutoff)
    feature_store = store.get_store(feature_repo(workspace))
    users = entity_features_as_of(feature_store, service, "user", sorted(held_out.test["user_id"].unique()), held_out.cutoff)
    items = entity_features_as_of(feature_store, service, "item", list(catalog), held_out.cutoff)
    transforms = on_demand_transforms(feature_store, service)

    stack = build_stack(Path(model_dir), Path(ranker_dir), items, stack_config, transforms)
    metric = f"ndcg@{k}"
    by_depth = {}
    for depth in sorted(set(candidate_depths) or {stack_config.candidates}, reverse=True):
        recommender = StackRecommender(stack.with_candidates(depth), users, held_out.cutoff)
        by_depth[depth] = (recommender, evaluate_recommender(recommender, held_out, k, catalog=catalog))
    depth_metrics = {depth: result.metrics[metric] for depth, (_, result) in by_depth.items()}
    candidate, candidate_result = by_depth[fewest_candidates(depth_metrics)]
    stack, stack_config = candidate.stack, candidate.stack.config
    recommenders: dict[str, Any] = {"popularity": PopularityRecommender().fit(held_out.train, catalog)}
    registry = ModelRegistry(Path(workspace) / "models")
    blessed = registry.current()
    if blessed is not None and blessed["feature_service"] == service:
        bundle = Path(blessed["path"])
        blessed_stack = build_stack(bundle / "model", bundle / "ranker", items, load_config(bundle), transforms)
        recommenders["blessed"] = StackRecommender(blessed_stack, users, held_out.cutoff, name="blessed")
    ground_truth_dir = Dataset(Path(dataset_dir)).ground_truth_dir
    if ground_truth_dir is not None:
        truth = GroundTruth.load(ground_truth_dir)
        recommenders["oracle"] = OracleRecommender(truth, truth.day_index(held_out.cutoff), catalog)

    results = {"model": candidate_result}
    results.update((name, evaluate_recommender(rec, held_out, k, catalog=catalog)) for name, rec in recommenders.items())
    retrieval = IndexRecommender(stack.index, users["user_id"].tolist(), stack.retrieval.user_vectors(users))
    recall = retrieval_recall(retrieval, held_out, catalog)
    # As the evaluation counts them: test positives the user had not already clicked in train.
    seen = held_out.train[held_out.train["clicked"]].groupby("user_id")["item_id"].agg(set)
    relevant = {
        user: items - seen.get(user, set()) for user, items in held_out.test.groupby("user_id")["item_id"].agg(set).items()
    }
    stages = stage_report(
        candidate.stages, dict(zip(items["item_id"], items["item_category"])), k, relevant=relevant, catalog_size=len(catalog)
    )
    decision = decide(
        results["model"].metrics,
        results["popularity"].metrics,
        results["blessed"].metrics if "blessed" in results else None,
        gate,
    )
    context = {
        "dataset": Dataset(Path(dataset_dir)).manifest.get("source"),
        "feature_service": service,
        "catalog_items": len(catalog),
        "last_blessed": blessed["version"] if blessed else "none (first model: compared with the baseline only)",
        "candidates per user": _depth_summary(stack_config.candidates, depth_metrics, metric),
        **{f"retrieval {name}": value for name, value in recall.items() if name != "users"},
        **held_out.summary(),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"recflow evaluation ({held_out.protocol} split, k={k})"
    stage_table = stage_markdown(stages, title="What each stage changes (top-k of the candidate stack)")
    page = render_html(title, results, decision, context)
    (out / "report.html").write_text(page.replace("</body>", f"{stage_html(stages, title='What each stage changes')}</body>"))
    (out / "report.md").write_text(render_markdown(title, results, decision, context) + "\n" + stage_table + "\n")
    evaluation = {
        "k": k,
        "results": {name: result.to_dict() for name, result in results.items()},
        "decision": decision.to_dict(),
        "context": context,
        "parent_model": blessed["version"] if blessed else None,
        "retrieval": recall,
        "stages": json.loads(stages.to_json(orient="index")),
        "stack": stack_config.model_dump(mode="json"),
        "candidate_depths": {"metric": metric, "by_depth": {str(d): v for d, v in sorted(depth_metrics.items())}},
    }
    _write_json(out / EVALUATION_FILE, evaluation)
    log.info("%s", decision.summary())
    return evaluation


def _depth_summary(chosen: int, metric_by_depth: dict[int, float], metric: str) -> str:
    """``100 (ndcg@10 with 100: 0.1045, 200: 0.1044)``; just the number when one depth was scored."""
    if len(metric_by_depth) == 1:
        return str(chosen)
    scores = ", ".join(f"{depth}: {value:.4f}" for depth, value in sorted(metric_by_depth.items()))
    return f"{chosen} ({metric} with {scores})"


def export_bundle(
    model_dir: str | Path,
    ranker_dir: str | Path,
    evaluation_dir: str | Path,
    dataset_dir: str | Path,
    workspace: str | Path,
    bundle_dir: str | Path,
) -> dict[str, Any]:
    """Write the model bundle serving loads, and register it as the blessed model.

    The bundle holds the two-tower model (``model/``), the ranker
    (``ranker/``), the serve-time item snapshot (features as of the end of the
    data) with its vectors and the ANN index built over them (``index/``), the
    stack configuration (``stack.json``), what the drift monitor and the
    canary analysis compare live traffic with (``drift_reference.json``) and
    ``model_card.json`` with the metrics, data, feature service, code
    version, parent model and the blessing decision with its evidence.
    """
    from recflow.features.training_set import entity_features_as_of, on_demand_transforms
    from recflow.monitoring.live import MonitorConfig, bundle_references, write_reference
    from recflow.pipeline.registry import ModelRegistry, build_model_card
    from recflow.recommender.stack import StackConfig, build_stack, save_config

    evaluation = json.loads((Path(evaluation_dir) / EVALUATION_FILE).read_text())
    if not evaluation["decision"]["blessed"]:
        raise ValueError("refusing to export a model the gate did not bless")
    dataset = Dataset(Path(dataset_dir))
    ranker_info = json.loads((Path(ranker_dir) / RANKER_INFO).read_text())
    model_info = json.loads((Path(model_dir) / MODEL_INFO).read_text())
    service = ranker_info["feature_service"]
    snapshot_at = pd.Timestamp(dataset.days()[-1] + dt.timedelta(days=1), tz="UTC")
    feature_store = store.get_store(feature_repo(workspace))
    items = entity_features_as_of(feature_store, service, "item", list(catalog_at(dataset_dir, snapshot_at)), snapshot_at)
    config = StackConfig.model_validate(evaluation["stack"])
    stack = build_stack(Path(model_dir), Path(ranker_dir), items, config, on_demand_transforms(feature_store, service))
    out = Path(bundle_dir)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out / "model")
    shutil.copytree(ranker_dir, out / "ranker")
    items.to_parquet(out / "item_features.parquet", index=False)
    vectors, bias = stack.retrieval.item_vectors(items)
    np.save(out / "item_embeddings.npy", vectors)
    np.save(out / "item_bias.npy", bias)
    stack.index.save(out / "index")
    save_config(config, out)
    # What the drift monitor and the canary analysis compare live traffic with (recflow.monitoring.live).
    references, scores, window = bundle_references(
        dataset, stack, feature_store, service, snapshot_at, evaluation["k"], MonitorConfig()
    )
    write_reference(out, references, scores, window)
    card = build_model_card(out, evaluation, dataset.manifest, service, {"retrieval": model_info, "ranking": ranker_info}, snapshot_at)
    card["data"]["dataset"] = str(dataset.path.resolve())  # what a retraining builds on (recflow.pipeline.retrain)
    _write_json(out / "model_card.json", card)
    registry_entry = ModelRegistry(Path(workspace) / "models").register(out, card)
    return {"version": card["version"], "registered_at": registry_entry["path"]}
