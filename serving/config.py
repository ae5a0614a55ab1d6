"""The recommender server's settings: limits on requests, batching and deadlines.

Read from a YAML file (``recflow serve --config serving.yaml``); unknown keys
are errors, so a misspelt setting is never silently ignored.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FaultConfig(BaseModel):
    """A deliberate fault, so a rollout can be shown to roll a faulty canary back (``recflow rollout --inject-fault``).

    ``latency`` delays every answer by ``latency_ms``; ``errors`` answers
    ``error_rate`` of the requests with HTTP 500. Off unless configured.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["latency", "errors"]
    latency_ms: float = Field(250.0, gt=0)
    error_rate: float = Field(0.3, gt=0, le=1)


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_k: int = Field(10, ge=1, description="Items returned when a request gives no k")
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for (at most the stack's candidates)")
    max_users_per_request: int = Field(64, ge=1, description="Instances (V1) or user ids (V2) in one request")
    max_excluded_items: int = Field(1000, ge=0, description="exclude_item_ids per instance")
    max_batch_users: int = Field(64, ge=1, description="Users the micro-batcher puts into one model call")
    batch_gather_ms: float = Field(
        20.0,
        ge=0,
        description="The longest a batch waits for the requests its predecessor answered to come back "
        "(not at all when the last batch was a single request)",
    )
    batch_gather_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A batch waits at most this share of the recent model calls' mean duration (feature read "
        "included): a split batch costs one more call, so the wait scales with what a call costs on this machine",
    )
    feature_deadline_ms: float = Field(
        100.0, gt=0, description="Online feature read budget; beyond it the batch gets popular items"
    )
    torch_threads: int = Field(
        1,
        ge=1,
        description="torch's intra-op threads for the model call. One: a micro-batch's tensors are small, and a "
        "second thread would compete with the event loop and the feature reads for the same two cores",
    )
    search_threads: int = Field(
        1,
        ge=1,
        description="Threads of the index search: faiss's OpenMP (HNSW index) and BLAS (exact index). One: a "
        "micro-batch's search takes a few hundred microseconds, and workers that spin after it take a core from the "
        "event loop and the clients (demo bundle, concurrency 8: 599-653 requests/s with faiss's default of one per "
        "core, 711-716 with one)",
    )
    request_time: dt.datetime | None = Field(
        None,
        description="Pin the request instant the ranker measures ages from (replaying a dataset's time); "
        "unset: the wall clock",
    )
    inject_fault: FaultConfig | None = Field(None, description="A deliberate fault (rollout drills); unset: none")

    @model_validator(mode="after")
    def _consistent(self) -> ServingConfig:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        if self.max_batch_users < self.max_users_per_request:
            raise ValueError(
                f"max_batch_users ({self.max_batch_users}) must hold a whole request "
                f"(max_users_per_request {self.max_users_per_request})"
            )
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> ServingConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})
