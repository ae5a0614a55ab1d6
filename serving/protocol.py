"""V1 and V2 (Open Inference Protocol) requests and responses of the ``recommender`` model.

Parsing is strict: every way a body can be wrong raises ``InvalidInput``
(HTTP 400) with a message naming the field, before any work is queued.

V1 ``POST /v1/models/recommender:predict``::

    {"instances": [{"user_id": "42", "k": 10, "exclude_item_ids": ["7"]}]}
    -> {"predictions": [{"user_id": "42", "items": [{"item_id": "9", "score": 0.93}, ...],
                         "model_version": "...", "fallback": null}]}

V2 ``POST /v2/models/recommender/infer``: input ``user_id`` (BYTES, shape
[n]) and optional ``k`` (INT32, shape [1] for every user or [n]); outputs
``item_ids`` (BYTES [n, k]) and ``scores`` (FP32 [n, k]), padded with ``""``
and 0.0 where fewer than k items exist, and ``fallback`` (BYTES [n], ``""``
when the full stack answered). The model version is in the response's
``model_version``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from recflow.recommender.online import Answer, Query
from serving.config import ServingConfig

V1_INSTANCE_FIELDS = {"user_id", "k", "exclude_item_ids"}
V2_INPUTS = {"user_id": "BYTES", "k": "INT32"}
MAX_ID_LENGTH = 256


def parse_v1(payload: Any, config: ServingConfig) -> list[Query]:
    if not isinstance(payload, dict):
        raise InvalidInput(
            "the request body must be a JSON object with 'instances' (send Content-Type: application/json)"
        )
    unknown = sorted(set(payload) - {"instances"})
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}: a V1 request holds only 'instances'")
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list of {\"user_id\": ...} objects")
    _check_batch(len(instances), "instances", config)
    return [_v1_query(instance, f"instances[{i}]", config) for i, instance in enumerate(instances)]


def _v1_query(instance: Any, where: str, config: ServingConfig) -> Query:
    if not isinstance(instance, dict):
        raise InvalidInput(f"{where} must be an object with 'user_id'")
    unknown = sorted(set(instance) - V1_INSTANCE_FIELDS)
    if unknown:
        raise InvalidInput(f"{where}: unknown field(s) {unknown}; allowed: {sorted(V1_INSTANCE_FIELDS)}")
    if "user_id" not in instance:
        raise InvalidInput(f"{where}.user_id is missing")
    user = _identifier(instance["user_id"], f"{where}.user_id")
    k = _k(instance.get("k", config.default_k), f"{where}.k", config)
    excluded = instance.get("exclude_item_ids", [])
    if not isinstance(excluded, list):
        raise InvalidInput(f"{where}.exclude_item_ids must be a list of item id strings")
    if len(excluded) > config.max_excluded_items:
        raise InvalidInput(
            f"{where}.exclude_item_ids holds {len(excluded)} items; at most {config.max_excluded_items} allowed"
        )
    exclude = tuple(_identifier(item, f"{where}.exclude_item_ids[{j}]") for j, item in enumerate(excluded))
    return Query(user, k, exclude)


def parse_v2(request: InferRequest, config: ServingConfig) -> list[Query]:
    inputs = {}
    for tensor in request.inputs:
        if tensor.name not in V2_INPUTS:
            raise InvalidInput(f"unknown input {tensor.name!r}; the inputs are {sorted(V2_INPUTS)}")
        if tensor.name in inputs:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        if tensor.datatype != V2_INPUTS[tensor.name]:
            raise InvalidInput(
                f"input {tensor.name!r} must have datatype {V2_INPUTS[tensor.name]}, not {tensor.datatype!r}"
            )
        inputs[tensor.name] = tensor
    if "user_id" not in inputs:
        raise InvalidInput("input 'user_id' (BYTES, shape [n]) is missing")
    users = _tensor_values(inputs["user_id"], "user_id")
    if not users:
        raise InvalidInput("input 'user_id' holds no user ids")
    _check_batch(len(users), "input 'user_id'", config)
    user_ids = [_identifier(_text(value, f"user_id[{i}]"), f"user_id[{i}]") for i, value in enumerate(users)]
    if "k" in inputs:
        ks = _tensor_values(inputs["k"], "k")
        if len(ks) not in (1, len(user_ids)):
            raise InvalidInput(f"input 'k' must have shape [1] or [{len(user_ids)}] (one per user), got {len(ks)} values")
        ks = [_k(value, f"k[{i}]", config) for i, value in enumerate(ks)]
        ks = ks * len(user_ids) if len(ks) == 1 else ks
    else:
        ks = [config.default_k] * len(user_ids)
    return [Query(user, k) for user, k in zip(user_ids, ks)]


def v1_response(answers: Sequence[Answer], version: str) -> dict:
    return {
        "predictions": [
            {
                "user_id": answer.user_id,
                "items": [{"item_id": item, "score": float(score)} for item, score in answer.items],
                "model_version": version,
                "fallback": answer.fallback,
            }
            for answer in answers
        ]
    }


def v2_response(request: InferRequest, answers: Sequence[Answer], queries: Sequence[Query], model: str, version: str):
    width = max(query.k for query in queries)
    item_ids, scores = [], []
    for answer in answers:
        padding = width - len(answer.items)
        item_ids.extend([item for item, _ in answer.items] + [""] * padding)
        scores.extend([float(score) for _, score in answer.items] + [0.0] * padding)
    n = len(answers)
    outputs = [
        InferOutput("item_ids", [n, width], "BYTES", item_ids),
        InferOutput("scores", [n, width], "FP32", scores),
        InferOutput("fallback", [n], "BYTES", [answer.fallback or "" for answer in answers]),
    ]
    return InferResponse(request.id or str(uuid.uuid4()), model, outputs, model_version=version)


def _check_batch(size: int, where: str, config: ServingConfig) -> None:
    if size > config.max_users_per_request:
        raise InvalidInput(f"{where} holds {size} users; at most {config.max_users_per_request} per request")


def _identifier(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"{where} must be 1 to {MAX_ID_LENGTH} characters long")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        # A lone surrogate ("\ud800") parses as JSON but breaks the feature store's key encoding.
        raise InvalidInput(f"{where} is not valid Unicode text") from error
    return value


def _k(value: Any, where: str, config: ServingConfig) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{where} must be an integer, got {type(value).__name__}")
    if not 1 <= value <= config.max_k:
        raise InvalidInput(f"{where} must be between 1 and {config.max_k}, got {value}")
    return value


def _text(value: Any, where: str) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidInput(f"{where} is not valid UTF-8") from error
    return value


def _tensor_values(tensor, name: str) -> list:
    """The tensor's values as a flat list, checked against its declared shape."""
    shape = list(tensor.shape)
    if len(shape) != 1:
        raise InvalidInput(f"input {name!r} must have a 1-D shape [n], got {shape}")
    data = tensor.data
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r} must carry its data as a JSON list")
    flat = _flatten(data)
    if len(flat) != shape[0]:
        raise InvalidInput(f"input {name!r} declares shape {shape} but holds {len(flat)} values")
    return flat


def _flatten(data: list) -> list:
    out = []
    for value in data:
        out.extend(_flatten(value) if isinstance(value, list) else [value])
    return out
