from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    ranker: Input[Model],
    dataset: Input[Dataset],
    split: Input[Dataset],
    workspace: str,
    k: int,
    use_ranker: bool,
    mmr_lambda: float,
    candidate_depths: str,
    gate: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    summary: Output[Markdown],
    evaluation: Output[Artifact],
) -> bool:
    """Score the stack, popularity baseline, last blessed stack and (synthetic world) oracle; decide the blessing.

    The stack is scored with each of ``candidate_depths`` (comma-separated
    candidates per user) and keeps the fewest that score within 1% of the most.

    Returns whether the gate blessed the model. A plain ``bool`` return (output
    ``Output``) rather than a named output: kfp.local 2.17 cannot resolve a
    named task output inside a ``dsl.If`` condition and skips the branch.
    """
    import os
    import shutil

    from recflow.evaluation.gate import GateConfig
    from recflow.pipeline import steps
    from recflow.pipeline.parameters import depth_list
    from recflow.recommender.stack import StackConfig
    from recflow.reranking.rerank import RerankConfig

    stack = StackConfig(use_ranker=use_ranker, rerank=RerankConfig(mmr_lambda=mmr_lambda))
    gate_config = GateConfig.model_validate_json(gate)
    result = steps.evaluate(
        model.path, ranker.path, dataset.path, split.path, workspace, evaluation.path, gate_config,
        k=k, stack_config=stack, candidate_depths=depth_list(candidate_depths),
    )  # fmt: skip
    for recommender, outcome in result["results"].items():
        for name, value in outcome["metrics"].items():
            metrics.log_metric(f"{recommender}/{name}", value)
    for name, value in result["retrieval"].items():
        metrics.log_metric(f"retrieval/{name}", value)
    shutil.copyfile(os.path.join(evaluation.path, "report.html"), report.path)
    shutil.copyfile(os.path.join(evaluation.path, "report.md"), summary.path)
    blessed = bool(result["decision"]["blessed"])
    evaluation.metadata.update({"blessed": blessed})
    return blessed
