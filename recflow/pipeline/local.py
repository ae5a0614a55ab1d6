"""Run and compile the training pipeline.

``run`` executes the real KFP pipeline with ``kfp.local`` (each component in a
subprocess of this Python environment); ``compile`` writes the YAML that is
checked into ``pipelines/`` and uploaded in the Kubeflow UI.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMPILED_PIPELINE = Path(__file__).resolve().parents[2] / "pipelines" / "training_pipeline.yaml"


def compile_pipeline(output: str | Path = COMPILED_PIPELINE) -> Path:
    from kfp import compiler

    from pipelines.training_pipeline import training_pipeline

    compiler.Compiler().compile(training_pipeline, str(output))
    return Path(output)


@dataclass(frozen=True)
class RunOutputs:
    run_dir: Path
    metrics: Path
    report: Path
    evaluation: dict[str, Any]
    bundle: Path | None

    def summary(self) -> str:
        decision = self.evaluation["decision"]
        lines = [f"pipeline run: {self.run_dir}"]
        for name, result in self.evaluation["results"].items():
            metrics = result["metrics"]
            k = self.evaluation["k"]
            lines.append(
                f"  {name:<11} ndcg@{k} {metrics[f'ndcg@{k}']:.4f}  recall@{k} {metrics[f'recall@{k}']:.4f}"
                f"  precision@{k} {metrics[f'precision@{k}']:.4f}  map {metrics['map']:.4f}"
            )
        lines.append(f"  blessed: {decision['blessed']}")
        lines.append(f"metrics: {self.metrics}")
        lines.append(f"report:  {self.report}")
        lines.append(f"bundle:  {self.bundle if self.bundle else 'none (the gate did not bless this model)'}")
        return "\n".join(lines)


def run_pipeline(workspace: str | Path, **parameters: Any) -> RunOutputs:
    """Run the pipeline to completion with ``kfp.local``; raise if any task fails."""
    from kfp import local

    from pipelines.training_pipeline import training_pipeline

    workspace = Path(workspace).resolve()
    root = workspace / "pipeline_runs"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    with warnings.catch_warnings():
        # The tasks' cluster resources (recflow.kubernetes.pipeline) mean nothing to a local run, as intended.
        warnings.filterwarnings("ignore", message=r"Task '.*': settings .* have no effect in the current local runner")
        training_pipeline(workspace=str(workspace), **parameters)
    run_dir = max(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    return collect_outputs(run_dir)


def collect_outputs(run_dir: Path) -> RunOutputs:
    """Where a finished local run left its metrics, report and bundle."""
    evaluate = run_dir / "evaluate-model"
    bundle = run_dir / "export-bundle" / "bundle"
    return RunOutputs(
        run_dir=run_dir,
        # kfp.local records the Metrics artifact in executor_output.json; the
        # evaluation JSON holds the same figures for every recommender.
        metrics=evaluate / "evaluation" / "evaluation.json",
        report=evaluate / "evaluation" / "report.html",
        evaluation=json.loads((evaluate / "evaluation" / "evaluation.json").read_text()),
        bundle=bundle if (bundle / "model_card.json").is_file() else None,
    )
