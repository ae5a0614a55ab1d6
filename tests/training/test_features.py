import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from recflow.training.features import ALL_FEATURES, FeatureSpec, Preprocessor


def test_infer_follows_the_naming_contract(training_frame):
    spec = FeatureSpec.infer(training_frame.assign(event_id="e", other=1.0))
    assert spec == FeatureSpec(
        user_numeric=["user_clicks_7d", "user_age"],
        user_categorical=["user_segment"],
        item_numeric=["item_impressions_7d", "item_ctr_7d"],
        item_categorical=["item_category"],
        history="user_recent_item_ids",
    )


def test_infer_on_an_arrow_backed_frame(training_set, training_frame):
    arrow_frame = pd.read_parquet(training_set, dtype_backend="pyarrow")
    assert FeatureSpec.infer(arrow_frame) == FeatureSpec.infer(training_frame)


def test_infer_rejects_unsupported_feature_dtypes(training_frame):
    with pytest.raises(ValueError, match="item_created_at"):
        FeatureSpec.infer(training_frame.assign(item_created_at=pd.Timestamp("2024-01-01", tz="UTC")))


def test_infer_refuses_to_guess_the_kind_of_an_all_null_column(training_frame):
    with pytest.raises(ValueError, match="user_recent_item_ids.*only nulls"):
        FeatureSpec.infer(training_frame.assign(user_recent_item_ids=None))


def test_infer_from_the_parquet_schema(tmp_path, training_frame):
    path = tmp_path / "training_set.parquet"
    schema = pa.Schema.from_pandas(training_frame, preserve_index=False)
    # Nulls in the first rows do not matter: the schema says what each column is.
    training_frame.assign(user_recent_item_ids=None).to_parquet(path, schema=schema, index=False)
    assert FeatureSpec.infer_from_parquet(path) == FeatureSpec.infer(training_frame)


def test_spec_rejects_unknown_keys():
    with pytest.raises(ValueError, match="user_numerics"):
        FeatureSpec.model_validate({"user_numerics": []})


def _assert_same(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_preprocessor_round_trips_through_json(tmp_path, training_frame):
    spec = FeatureSpec.infer(training_frame)
    fitted = Preprocessor.fit(training_frame, spec, max_history=4)
    fitted.save(tmp_path / "preprocessor.json")
    loaded = Preprocessor.load(tmp_path / "preprocessor.json")
    assert loaded.fingerprint() == fitted.fingerprint()
    _assert_same(loaded.encode_users(training_frame), fitted.encode_users(training_frame))
    _assert_same(loaded.encode_items(training_frame), fitted.encode_items(training_frame))


def test_arrow_and_numpy_backed_frames_encode_identically(training_set, training_frame):
    spec = FeatureSpec.infer(training_frame)
    arrow_frame = pd.read_parquet(training_set, dtype_backend="pyarrow")
    fitted = Preprocessor.fit(training_frame, spec, max_history=4)
    assert Preprocessor.fit(arrow_frame, spec, max_history=4).fingerprint() == fitted.fingerprint()
    _assert_same(fitted.encode_users(arrow_frame), fitted.encode_users(training_frame))
    _assert_same(fitted.encode_items(arrow_frame), fitted.encode_items(training_frame))


def test_unknown_ids_categories_and_nulls_map_to_zero(training_frame):
    spec = FeatureSpec.infer(training_frame)
    fitted = Preprocessor.fit(training_frame, spec, max_history=3)
    unseen = pd.DataFrame(
        {
            "user_id": ["nobody", "u1"],
            "user_segment": ["atlantis", None],
            "user_clicks_7d": [np.nan, 3.0],
            "user_age": [30, 40],
            "user_recent_item_ids": [None, ["i1", "not-an-item", "i2", "i3", "i4"]],
            "item_id": ["nothing", "i1"],
            "item_category": ["cooking", "news"],
            "item_impressions_7d": [np.nan, 1e9],
            "item_ctr_7d": [0.5, np.nan],
        }
    )
    users = fitted.encode_users(unseen)
    items = fitted.encode_items(unseen)
    assert users["ids"][0] == 0 and users["ids"][1] > 0
    assert users["categorical"][:, 0].tolist() == [0, 0]
    assert users["numeric"][0, 0] == 0.0
    assert items["ids"][0] == 0 and items["ids"][1] > 0
    assert items["categorical"][0, 0] == 0 and items["categorical"][1, 0] > 0
    assert items["numeric"][1, 1] == 0.0
    assert torch.isfinite(items["numeric"]).all()
    # No history: all padding. Long history: the last 3 items, the unknown one masked.
    assert not users["history_mask"][0].any()
    item_index = {item_id: i + 1 for i, item_id in enumerate(fitted.item_ids)}
    assert users["history"][1].tolist() == [item_index["i2"], item_index["i3"], item_index["i4"]]
    assert users["history_mask"][1].all()
    short = fitted.encode_users(unseen.assign(user_recent_item_ids=[["i1", "not-an-item"], []]))
    assert short["history"][0].tolist() == [item_index["i1"], 0, 0]
    assert short["history_mask"][0].tolist() == [True, False, False]
    assert not short["history_mask"][1].any()


def test_numeric_features_are_log_scaled_and_standardised(training_frame):
    spec = FeatureSpec.infer(training_frame)
    fitted = Preprocessor.fit(training_frame, spec, max_history=3)
    column = spec.item_numeric.index("item_impressions_7d")
    values = fitted.encode_items(training_frame)["numeric"][:, column]
    assert abs(values.mean().item()) < 1e-3
    assert abs(values.std().item() - 1.0) < 1e-2


def test_missing_feature_columns_are_named(training_frame):
    spec = FeatureSpec.infer(training_frame)
    fitted = Preprocessor.fit(training_frame, spec, max_history=3)
    with pytest.raises(ValueError, match=r"\['user_age', 'user_recent_item_ids'\]"):
        fitted.encode_users(training_frame.drop(columns=["user_age", "user_recent_item_ids"]))


def test_all_empty_history_column(training_frame):
    spec = FeatureSpec.infer(training_frame)
    fitted = Preprocessor.fit(training_frame, spec, max_history=3)
    empty = training_frame.head(3).assign(user_recent_item_ids=[None, None, None])
    assert not fitted.encode_users(empty)["history_mask"].any()
    arrow_empty = pa.Table.from_pandas(training_frame.head(3).assign(user_recent_item_ids=[[], [], []]))
    assert not fitted.encode_users(arrow_empty.to_pandas(types_mapper=pd.ArrowDtype))["history_mask"].any()


def test_without_leaves_out_named_columns_or_all_of_them(training_frame):
    spec = FeatureSpec.infer(training_frame)
    reduced = spec.without(["user_segment", "user_recent_item_ids", "item_ctr_7d"])
    assert reduced.history is None
    assert "user_segment" not in reduced.user_categorical and "item_ctr_7d" not in reduced.item_numeric
    assert set(reduced.feature_columns()) == set(spec.feature_columns()) - {"user_segment", "user_recent_item_ids", "item_ctr_7d"}
    assert spec.without([ALL_FEATURES]).feature_columns() == []
    assert spec.without([]) == spec
    with pytest.raises(ValueError, match=r"cannot leave out \['user_sgement'\]"):
        spec.without(["user_sgement"])
