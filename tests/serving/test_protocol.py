"""V1 and V2 over HTTP against the real model server: answers, batches, cold start, bad input."""

from __future__ import annotations

import json

import httpx
import pytest

V1 = "/v1/models/recommender:predict"
V2 = "/v2/models/recommender/infer"
JSON = {"Content-Type": "application/json"}


def known_users(workspace, n: int) -> list[str]:
    return workspace.known_users()[:n]


def post(server, path: str, body=None, content: bytes | None = None, headers=JSON) -> httpx.Response:
    if body is not None:  # json.dumps escapes to ASCII, so even a lone surrogate gets through
        content = json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30)


def test_v1_answers_a_batch_of_known_users_with_the_full_stack(server, workspace):
    users = known_users(workspace, 3)
    response = post(server, V1, {"instances": [{"user_id": u, "k": 5} for u in users]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["user_id"] for p in predictions] == users
    for prediction in predictions:
        assert prediction["fallback"] is None
        assert prediction["model_version"] == workspace.card["version"]
        items = prediction["items"]
        assert len(items) == 5 and len({i["item_id"] for i in items}) == 5
        assert all(isinstance(i["score"], float) for i in items)


def test_excluded_items_are_never_served(server, workspace):
    user = known_users(workspace, 1)[0]
    first = post(server, V1, {"instances": [{"user_id": user, "k": 10}]}).json()["predictions"][0]["items"]
    exclude = [item["item_id"] for item in first[:3]]
    second = post(server, V1, {"instances": [{"user_id": user, "k": 10, "exclude_item_ids": exclude}]})
    served = [item["item_id"] for item in second.json()["predictions"][0]["items"]]
    assert not set(served) & set(exclude)
    assert len(served) == 10


def test_unknown_user_gets_popular_items_named_as_a_cold_start(server):
    response = post(server, V1, {"instances": [{"user_id": "never-seen-user", "k": 4}]})
    assert response.status_code == 200
    prediction = response.json()["predictions"][0]
    assert prediction["fallback"] == "unknown_user"
    assert len(prediction["items"]) == 4
    scores = [item["score"] for item in prediction["items"]]
    assert scores == sorted(scores, reverse=True)


def test_v2_answers_with_padded_tensors_and_the_model_version(server, workspace):
    users = known_users(workspace, 2) + ["never-seen-user"]
    body = {
        "inputs": [
            {"name": "user_id", "datatype": "BYTES", "shape": [3], "data": users},
            {"name": "k", "datatype": "INT32", "shape": [1], "data": [6]},
        ]
    }
    response = post(server, V2, body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["model_version"] == workspace.card["version"]
    outputs = {output["name"]: output for output in payload["outputs"]}
    assert outputs["item_ids"]["shape"] == [3, 6] and outputs["item_ids"]["datatype"] == "BYTES"
    assert outputs["scores"]["shape"] == [3, 6] and outputs["scores"]["datatype"] == "FP32"
    assert outputs["fallback"]["data"] == ["", "", "unknown_user"]
    v1 = post(server, V1, {"instances": [{"user_id": u, "k": 6} for u in users]}).json()["predictions"]
    ids = outputs["item_ids"]["data"]
    for row, prediction in enumerate(v1):
        assert ids[row * 6 : (row + 1) * 6] == [item["item_id"] for item in prediction["items"]]


def _samples(server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {
        name: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for name, value in [line.rsplit(" ", 1)]
    }


def test_answers_name_the_variant_that_served_them(server, workspace):
    """On a cluster the feedback a client returns must carry the variant that answered (the canary
    analysis and the drift monitor select by it): the server names its Knative revision, or in
    Standard mode its pod's Deployment; on the local platform the proxy does instead."""
    from serving.model import served_variant

    user = known_users(workspace, 1)[0]
    v1 = post(server, V1, {"instances": [{"user_id": user}]})
    v2 = post(server, V2, {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user]}]})
    assert v1.status_code == v2.status_code == 200
    assert v1.headers["X-Recflow-Variant"] == v2.headers["X-Recflow-Variant"] == server.env["K_REVISION"]
    assert served_variant({"RECFLOW_POD_NAME": "recommender-c1a2b3c4-predictor-5d8f9c7b6-x2k4q"}) == "recommender-c1a2b3c4-predictor"
    assert served_variant({}) == ""


def test_metrics_count_stages_fallbacks_scores_and_feature_age(server, workspace):
    before = _samples(server)
    post(server, V1, {"instances": [{"user_id": known_users(workspace, 1)[0], "k": 5}, {"user_id": "another-unknown"}]})
    after = _samples(server)

    def grew(name: str, by: float = 1.0) -> bool:
        return after.get(name, 0.0) >= before.get(name, 0.0) + by

    for stage in ("features", "retrieval", "ranking", "reranking"):
        assert grew(f'recflow_stage_seconds_count{{stage="{stage}"}}'), stage
    assert grew('recflow_fallback_total{reason="unknown_user"}')
    assert grew('recflow_requests_total{endpoint="v1",status="200"}')
    assert grew("recflow_served_score_count", by=5)  # the known user's 5 items; cold starts are not model scores
    assert grew("recflow_feature_age_seconds_count")
    assert grew("recflow_batch_users_sum", by=2)
    version = workspace.card["version"]
    assert any(name.startswith("recflow_model_info{") and f'version="{version}"' in name for name in after)


BAD_V1 = {
    "missing user_id": ({"instances": [{"k": 3}]}, "instances[0].user_id"),
    "user_id a number": ({"instances": [{"user_id": 42}]}, "instances[0].user_id"),
    "k zero": ({"instances": [{"user_id": "u1", "k": 0}]}, "instances[0].k"),
    "k negative": ({"instances": [{"user_id": "u1", "k": -5}]}, "instances[0].k"),
    "k above the maximum": ({"instances": [{"user_id": "u1", "k": 51}]}, "instances[0].k"),
    "k a string": ({"instances": [{"user_id": "u1", "k": "10"}]}, "instances[0].k"),
    "exclude not a list": ({"instances": [{"user_id": "u1", "exclude_item_ids": "i1"}]}, "exclude_item_ids"),
    "oversized batch": ({"instances": [{"user_id": f"u{i}"} for i in range(17)]}, "instances"),
    "no instances": ({"inputs": []}, "instances"),
    "unknown field": ({"instances": [{"user_id": "u1", "kk": 3}]}, "kk"),
}


@pytest.mark.parametrize("case", sorted(BAD_V1))
def test_bad_v1_bodies_get_400_naming_the_field(server, case):
    body, field = BAD_V1[case]
    response = post(server, V1, body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]


@pytest.mark.parametrize(
    "content, headers",
    [(b"{not json", JSON), (b"user_id=1", {"Content-Type": "application/x-www-form-urlencoded"}), (b"", JSON)],
)
def test_non_json_v1_bodies_get_400(server, content, headers):
    """KServe's decoder says "Unrecognized request format" for JSON that does not parse."""
    response = post(server, V1, content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert "JSON" in response.json()["error"] or "request format" in response.json()["error"]


def _v2(user_ids=("u1",), datatype="BYTES", shape=None, k=None):
    inputs = [{"name": "user_id", "datatype": datatype, "shape": shape or [len(user_ids)], "data": list(user_ids)}]
    if k is not None:
        inputs.append({"name": "k", **k})
    return {"inputs": inputs}


BAD_V2 = {
    "user_id as INT32": (_v2([1], datatype="INT32"), "user_id"),
    "user_id shape mismatch": (_v2(["u1", "u2"], shape=[3]), "user_id"),
    "user_id 2-D": (_v2(["u1", "u2"], shape=[1, 2]), "user_id"),
    "user_id numbers in BYTES": (_v2([1, 2]), "user_id[0]"),
    "user_id a lone surrogate": (_v2(["\ud800"]), "user_id[0]"),
    "missing user_id": ({"inputs": [{"name": "k", "datatype": "INT32", "shape": [1], "data": [3]}]}, "user_id"),
    "k as FP32": (_v2(k={"datatype": "FP32", "shape": [1], "data": [3.0]}), "'k'"),
    "k zero": (_v2(k={"datatype": "INT32", "shape": [1], "data": [0]}), "k[0]"),
    "k too many": (_v2(k={"datatype": "INT32", "shape": [2], "data": [3, 4]}), "'k'"),
    "oversized batch": (_v2([f"u{i}" for i in range(17)]), "user_id"),
    "unknown input": ({"inputs": [*_v2()["inputs"], {"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, "'x'"),
    "input without datatype": ({"inputs": [{"name": "user_id", "shape": [1], "data": ["u1"]}]}, "datatype"),
    "inputs not a list": ({"inputs": "u1"}, "inputs"),
}


@pytest.mark.parametrize("case", sorted(BAD_V2))
def test_bad_v2_bodies_get_400_naming_the_field(server, case):
    body, field = BAD_V2[case]
    response = post(server, V2, body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]


def test_non_json_v2_body_gets_400(server):
    response = post(server, V2, content=b"\x00\x01garbage", headers=JSON)
    assert response.status_code == 400, response.text
