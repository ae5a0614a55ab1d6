"""The recflow training pipeline (KFP v2).

validate data -> compute features -> feast apply + materialize -> training set
-> train the two-tower retrieval model (torchrun) -> ranking set -> train the
ranker -> evaluate the stack + gate -> if blessed, export the bundle.

Run locally with ``recflow pipeline run`` (``kfp.local``); ``recflow pipeline
compile`` writes ``pipelines/training_pipeline.yaml``, the file to upload in
the Kubeflow UI (pipelines/README.md). Every parameter below is a field in the
UI's run form; their defaults and meaning live in
:mod:`recflow.pipeline.parameters`. Every task carries its cluster settings
(:mod:`recflow.kubernetes.pipeline`: workspace volume, secrets, resources),
which ``kfp.local`` ignores.
"""

from kfp import dsl

from components.build_ranking_set.component import build_ranking_set
from components.build_training_set.component import build_training_set
from components.compute_features.component import compute_features
from components.evaluate_model.component import evaluate_model
from components.export_bundle.component import export_bundle
from components.ingest_data.component import ingest_data
from components.materialize_features.component import materialize_features
from components.split_events.component import split_events
from components.train_model.component import train_model
from components.train_ranker.component import train_ranker
from components.validate_data.component import validate_data

from recflow.kubernetes.pipeline import for_cluster, with_trainjob
from recflow.pipeline.parameters import DEFAULTS


@dsl.pipeline(name="recflow-training", description="Events to a blessed two-tower recommender bundle")
def training_pipeline(
    workspace: str,
    data_source: str = DEFAULTS.data_source,
    seed: int = DEFAULTS.seed,
    protocol: str = DEFAULTS.protocol,
    test_days: int = DEFAULTS.test_days,
    start_date: str = DEFAULTS.start_date,
    end_date: str = DEFAULTS.end_date,
    feature_service: str = DEFAULTS.feature_service,
    ranking_feature_service: str = DEFAULTS.ranking_feature_service,
    ranker_epochs: int = DEFAULTS.ranker_epochs,
    negatives: str = DEFAULTS.negatives,
    negatives_per_positive: float = DEFAULTS.negatives_per_positive,
    objective: str = DEFAULTS.objective,
    ignore_features: str = DEFAULTS.ignore_features,
    epochs: int = DEFAULTS.epochs,
    batch_size: int = DEFAULTS.batch_size,
    learning_rate: float = DEFAULTS.learning_rate,
    embedding_dim: int = DEFAULTS.embedding_dim,
    use_ranker: bool = DEFAULTS.use_ranker,
    mmr_lambda: float = DEFAULTS.mmr_lambda,
    candidate_depths: str = DEFAULTS.candidate_depths,
    nproc_per_node: int = DEFAULTS.nproc_per_node,
    k: int = DEFAULTS.k,
    gate: str = DEFAULTS.gate,
):
    ingest = ingest_data(data_source=data_source, seed=seed)
    validate = validate_data(raw=ingest.outputs["raw"])
    split = split_events(
        dataset=validate.outputs["dataset"],
        protocol=protocol,
        test_days=test_days,
        start_date=start_date,
        end_date=end_date,
    )
    features = compute_features(dataset=validate.outputs["dataset"], split=split.outputs["split"], workspace=workspace)
    online = materialize_features(
        dataset=validate.outputs["dataset"], features=features.outputs["features"], workspace=workspace
    )
    training_set = build_training_set(
        dataset=validate.outputs["dataset"],
        split=split.outputs["split"],
        online=online.outputs["online"],
        workspace=workspace,
        feature_service=feature_service,
        negatives=negatives,
        negatives_per_positive=negatives_per_positive,
        seed=seed,
    )
    train = train_model(
        training_set=training_set.outputs["training_set"],
        objective=objective,
        ignore_features=ignore_features,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        embedding_dim=embedding_dim,
        nproc_per_node=nproc_per_node,
        seed=seed,
    )
    ranking_set = build_ranking_set(
        dataset=validate.outputs["dataset"],
        split=split.outputs["split"],
        online=online.outputs["online"],
        model=train.outputs["model"],
        workspace=workspace,
        feature_service=ranking_feature_service,
        negatives_per_positive=negatives_per_positive,
        seed=seed,
    )
    ranker = train_ranker(
        ranking_set=ranking_set.outputs["ranking_set"],
        dataset=validate.outputs["dataset"],
        epochs=ranker_epochs,
        ignore_features=ignore_features,
        seed=seed,
    )
    evaluate = evaluate_model(
        model=train.outputs["model"],
        ranker=ranker.outputs["ranker"],
        dataset=validate.outputs["dataset"],
        split=split.outputs["split"],
        workspace=workspace,
        k=k,
        use_ranker=use_ranker,
        mmr_lambda=mmr_lambda,
        candidate_depths=candidate_depths,
        gate=gate,
    )
    with dsl.If(evaluate.outputs["Output"] == True, name="blessed"):  # noqa: E712 (KFP condition, not a Python bool)
        export = export_bundle(
            model=train.outputs["model"],
            ranker=ranker.outputs["ranker"],
            evaluation=evaluate.outputs["evaluation"],
            dataset=validate.outputs["dataset"],
            workspace=workspace,
        )
    for task in (ingest, validate, split, features, online, training_set, ranking_set, evaluate, export):
        for_cluster(task)
    for task in (train, ranker):
        for_cluster(task, "training")
    with_trainjob(train)
