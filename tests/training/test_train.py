"""In-process training (one process): learning, determinism, checkpoints, inference."""

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from recflow.training.config import TrainConfig
from recflow.training.features import FeatureSpec
from recflow.training.inference import TrainedModel
from recflow.training.train import CHECKPOINT_FILE, train

SMALL = TrainConfig(
    epochs=4, batch_size=64, learning_rate=0.01, embedding_dim=8, hidden_dim=16, max_history=5, log_every_steps=20
)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(wins + ties / 2)


def _weights(directory) -> dict[str, torch.Tensor]:
    return torch.load(directory / "model.pt", weights_only=True)


@pytest.fixture
def spec(training_frame) -> FeatureSpec:
    return FeatureSpec.infer(training_frame)


def test_training_learns_the_planted_signal(tmp_path, make_frame):
    frame = make_frame(rows=4000)
    held_out = frame.sample(frac=0.2, random_state=0)
    frame.drop(held_out.index).to_parquet(tmp_path / "train.parquet", index=False)
    spec = FeatureSpec.infer(frame)

    metrics = train(tmp_path / "train.parquet", spec, tmp_path / "model", SMALL)
    losses = metrics["epoch_losses"]
    assert len(losses) == SMALL.epochs and losses[-1] < losses[0] - 0.05

    model = TrainedModel.load(tmp_path / "model")
    user_vectors = model.user_vectors(held_out)
    item_vectors, item_bias = model.item_vectors(held_out)
    row_scores = (user_vectors * item_vectors).sum(axis=1) + item_bias
    assert _auc(held_out["label"].to_numpy(), row_scores) > 0.7

    # Scored against the whole catalogue, every segment prefers its own category.
    users = frame.drop_duplicates("user_id")
    items = frame.drop_duplicates("item_id")
    scores = model.score(users, items)
    assert scores.shape == (len(users), len(items))
    # Segment k prefers category k (see conftest).
    segment = users["user_segment"].map({s: i for i, s in enumerate(["north", "south", "east", "west"])})
    category = items["item_category"].map({c: i for i, c in enumerate(["news", "sports", "music", "games"])})
    preferred = segment.to_numpy()[:, None] == category.to_numpy()[None, :]
    known = segment.notna().to_numpy()
    own = np.where(preferred, scores, np.nan)[known]
    other = np.where(~preferred, scores, np.nan)[known]
    assert (np.nanmean(own, axis=1) > np.nanmean(other, axis=1)).mean() > 0.9


def test_exports_the_model_directory(tmp_path, training_set, spec):
    metrics = train(training_set, spec, tmp_path / "model", SMALL.model_copy(update={"epochs": 1}))
    exported = sorted(path.name for path in (tmp_path / "model").iterdir())
    assert exported == [
        "feature_spec.json",
        "model.pt",
        "preprocessor.json",
        "train_config.json",
        "train_metrics.json",
    ]
    assert json.loads((tmp_path / "model" / "train_metrics.json").read_text()) == metrics
    assert metrics["world_size"] == 1 and metrics["samples_per_second"] > 0
    assert metrics["steps"] == 2000 // SMALL.batch_size  # the last incomplete batch is dropped
    assert FeatureSpec.model_validate_json((tmp_path / "model" / "feature_spec.json").read_text()) == spec


def test_left_out_features_are_not_read(tmp_path, training_set, spec, training_frame):
    config = SMALL.model_copy(update={"epochs": 1, "ignore_features": ["user_clicks_7d", "item_ctr_7d"]})
    train(training_set, spec, tmp_path / "model", config)
    model = TrainedModel.load(tmp_path / "model")
    assert model.preprocessor.spec == spec.without(["user_clicks_7d", "item_ctr_7d"])
    # Changed, or even absent, the left-out columns change no score.
    frame = training_frame.head(50)
    changed = frame.assign(user_clicks_7d=1e6, item_ctr_7d=-3.0)
    np.testing.assert_array_equal(model.score(frame, frame), model.score(changed, changed))
    absent = frame.drop(columns=["user_clicks_7d", "item_ctr_7d"])
    np.testing.assert_array_equal(model.score(frame, frame), model.score(absent, absent))

    ids_only = SMALL.model_copy(update={"epochs": 1, "ignore_features": ["*"]})
    train(training_set, spec, tmp_path / "ids", ids_only)
    assert TrainedModel.load(tmp_path / "ids").preprocessor.spec == FeatureSpec()
    with pytest.raises(ValueError, match="cannot leave out"):
        train(training_set, spec, tmp_path / "typo", SMALL.model_copy(update={"ignore_features": ["user_clicks_7"]}))


def test_same_seed_gives_identical_weights(tmp_path, training_set, spec):
    config = SMALL.model_copy(update={"epochs": 2})
    train(training_set, spec, tmp_path / "a", config)
    train(training_set, spec, tmp_path / "b", config)
    train(training_set, spec, tmp_path / "c", config.model_copy(update={"seed": 7}))
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not all(torch.equal(a[name], c[name]) for name in a)


def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path, training_set, spec, caplog):
    config = SMALL.model_copy(update={"epochs": 2, "checkpoint_every_steps": 10})
    train(training_set, spec, tmp_path / "straight", config)

    train(training_set, spec, tmp_path / "first", config.model_copy(update={"epochs": 1}), tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / CHECKPOINT_FILE).is_file()
    with caplog.at_level("INFO", logger="recflow.training"):
        metrics = train(training_set, spec, tmp_path / "resumed", config, tmp_path / "ckpt")
    steps_per_epoch = 2000 // config.batch_size
    assert f"resuming from step {steps_per_epoch}" in caplog.text
    assert metrics["resumed_from_step"] == steps_per_epoch and metrics["steps"] == 2 * steps_per_epoch

    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_a_checkpoint_of_another_run_is_refused(tmp_path, training_set, spec):
    train(training_set, spec, tmp_path / "a", SMALL.model_copy(update={"epochs": 1}), tmp_path / "ckpt")
    other = SMALL.model_copy(update={"learning_rate": 0.5})
    with pytest.raises(ValueError, match=r"another run .*learning_rate"):
        train(training_set, spec, tmp_path / "b", other, tmp_path / "ckpt")


def test_a_training_set_smaller_than_one_batch_is_an_error(tmp_path, training_set, spec):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(training_set, spec, tmp_path / "model", SMALL.model_copy(update={"batch_size": 4096}))


def test_score_names_missing_columns_and_handles_unknown_ids(tmp_path, training_set, training_frame, spec):
    train(training_set, spec, tmp_path / "model", SMALL.model_copy(update={"epochs": 1}))
    model = TrainedModel.load(tmp_path / "model")
    users = training_frame.head(5)
    items = training_frame.head(7)
    with pytest.raises(ValueError, match="item_ctr_7d"):
        model.score(users, items.drop(columns=["item_ctr_7d"]))

    strangers = users.assign(user_id="stranger", user_segment="unseen", user_recent_item_ids=None)
    scores = model.score(strangers, items.assign(item_id="new-item"))
    assert scores.shape == (5, 7) and np.isfinite(scores).all()

    # The catalogue scores are the model's logits for the same (user, item) pairs.
    encoded_users = model.preprocessor.encode_users(users)
    encoded_items = model.preprocessor.encode_items(users)
    with torch.no_grad():
        logits = model.model(encoded_users, encoded_items).numpy()
    np.testing.assert_allclose(np.diag(model.score(users, users)), logits, rtol=1e-5, atol=1e-5)


def test_score_is_fast_enough_for_a_catalogue(tmp_path, training_set, training_frame, spec):
    train(training_set, spec, tmp_path / "model", SMALL.model_copy(update={"epochs": 1}))
    model = TrainedModel.load(tmp_path / "model")
    rng = np.random.default_rng(0)
    users = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 200, 20_000)],
            "user_segment": rng.choice(training_frame["user_segment"].dropna().unique(), 20_000),
            "user_clicks_7d": rng.poisson(5, 20_000).astype(float),
            "user_age": rng.integers(18, 70, 20_000),
            "user_recent_item_ids": [[f"i{j}" for j in rng.integers(0, 80, 5)]] * 20_000,
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(5_000)],
            "item_category": rng.choice(training_frame["item_category"].unique(), 5_000),
            "item_impressions_7d": rng.lognormal(5, 2, 5_000),
            "item_ctr_7d": rng.random(5_000),
        }
    )
    started = time.perf_counter()
    scores = model.score(users, items)
    assert scores.shape == (20_000, 5_000)
    assert time.perf_counter() - started < 10
