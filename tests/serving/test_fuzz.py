"""Generated bodies thrown at V1 and V2: a client's mistake is never a server error.

Hypothesis draws bodies near the real shape (the right field names with any
JSON values, right values in the wrong places) and far from it (any JSON, raw
bytes); 700 per protocol, 1,400 in all. Each answer must be 200 or 4xx.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

V1 = "/v1/models/recommender:predict"
V2 = "/v2/models/recommender/infer"
EXAMPLES = 700

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=12)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12
)
user_ids = st.one_of(st.sampled_from(["u1", "u2", "never-seen"]), st.text(max_size=300), json_values)
ks = st.one_of(st.integers(-3, 120), json_values)

v1_instance = st.fixed_dictionaries(
    {},
    optional={
        "user_id": user_ids,
        "k": ks,
        "exclude_item_ids": st.one_of(st.lists(st.text(max_size=6), max_size=5), json_values),
        "extra": json_values,
    },
)
v1_bodies = st.one_of(
    st.fixed_dictionaries({"instances": st.lists(v1_instance, max_size=20)}),
    st.fixed_dictionaries({"instances": json_values}),
    json_values,
)

datatypes = st.sampled_from(["BYTES", "INT32", "INT64", "FP32", "BOOL", "FP16", "STRING", ""])
v2_tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["user_id", "k", "other"])},
    optional={
        "datatype": datatypes,
        "shape": st.one_of(st.lists(st.integers(-2, 20), max_size=3), json_values),
        "data": st.one_of(st.lists(st.one_of(st.text(max_size=8), st.integers(-5, 200)), max_size=20), json_values),
        "parameters": json_values,
    },
)
v2_bodies = st.one_of(
    st.fixed_dictionaries({"inputs": st.lists(v2_tensor, max_size=3)}, optional={"id": json_values, "outputs": json_values}),
    json_values,
)


def encode(body) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"Content-Type": "application/json"}, timeout=30) as http:
        yield http


FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@FUZZ
@given(body=st.one_of(v1_bodies, st.binary(max_size=64)))
def test_v1_never_answers_5xx(client, body):
    response = client.post(V1, content=encode(body))
    assert response.status_code < 500, (body, response.text)


@FUZZ
@given(body=st.one_of(v2_bodies, st.binary(max_size=64)))
def test_v2_never_answers_5xx(client, body):
    response = client.post(V2, content=encode(body))
    assert response.status_code < 500, (body, response.text)
