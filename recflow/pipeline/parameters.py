"""The training pipeline's parameters: one typed place for their defaults.

The pipeline signature (what the Kubeflow UI shows) takes its defaults from
here, and ``recflow pipeline run`` / ``recflow bench quality`` validate their
arguments against it, so a misspelt or ill-typed parameter is a clear error
before anything runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The blessing gate: not worse than popularity on NDCG@10 (the first model) and
# at most 2% below the last blessed model on NDCG@10 and recall@10.
DEFAULT_GATE = (
    '{"value_thresholds": {}, "min_lift_over_baseline": {"ndcg@10": 0.0}, '
    '"max_regression_vs_blessed": {"ndcg@10": 0.02, "recall@10": 0.02}}'
)


class PipelineParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_source: str = Field("world:demo", description="world:<scale>, a MovieLens path or a dataset directory")
    seed: int = 0
    protocol: Literal["time", "stratified"] = "time"
    test_days: int = Field(3, ge=1, description="days held out by the time protocol")
    start_date: str = Field("", description="first day used (ISO date; empty: all)")
    end_date: str = Field("", description="last day used (ISO date; empty: all)")
    feature_service: str = Field("retrieval_v1", description="feature service of the retrieval (two-tower) model")
    ranking_feature_service: str = Field("ranking_v1", description="feature service of the ranker (and of serving)")
    ranker_epochs: int = Field(3, ge=1)
    negatives: Literal["random", "impressions"] = "random"
    negatives_per_positive: float = Field(4.0, gt=0)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(2048, ge=1)
    learning_rate: float = Field(0.003, gt=0)
    embedding_dim: int = Field(32, ge=1)
    nproc_per_node: int = Field(2, ge=1)
    k: int = Field(10, ge=1)
    gate: str = DEFAULT_GATE


DEFAULTS = PipelineParameters()
