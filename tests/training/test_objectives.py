"""The in-batch softmax objective: logits, logQ correction, learning, checkpoints."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from recflow.training.config import TrainConfig
from recflow.training.features import FeatureSpec
from recflow.training.inference import TrainedModel
from recflow.training.train import in_batch_softmax_logits, item_log_frequency, train

SOFTMAX = TrainConfig(
    objective="in_batch_softmax",
    temperature=0.2,
    epochs=8,
    batch_size=64,
    learning_rate=0.01,
    embedding_dim=8,
    hidden_dim=16,
    max_history=5,
    log_every_steps=100,
)


def _toy():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]])
    items = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0], [3.0, 3.0]])
    bias = torch.tensor([0.5, 0.0, -0.5, 0.1])
    ids = torch.tensor([7, 8, 9, 10])
    return users, items, bias, ids


def test_logits_are_scores_over_temperature_with_the_row_targets():
    users, items, bias, ids = _toy()
    logits, targets = in_batch_softmax_logits(users[:2], items, bias, ids, temperature=0.5, first_row=1)
    expected = (users[:2] @ items.T + bias) / 0.5
    torch.testing.assert_close(logits, expected)
    # Rows 1 and 2 of the global batch: their own items are columns 1 and 2.
    assert targets.tolist() == [1, 2]


def test_logq_correction_lowers_every_column_by_its_log_frequency():
    users, items, bias, ids = _toy()
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    plain, targets = in_batch_softmax_logits(users, items, bias, ids, temperature=2.0)
    corrected, same_targets = in_batch_softmax_logits(users, items, bias, ids, temperature=2.0, item_log_q=q.log())
    torch.testing.assert_close(corrected, plain - q.log())
    assert torch.equal(targets, same_targets)
    # A frequent item is demoted relative to a rare one by log(q_frequent / q_rare):
    # the gap between columns 0 (q=0.4) and 3 (q=0.1) shrinks by log 4 in every row.
    torch.testing.assert_close(
        (corrected[:, 0] - corrected[:, 3]) - (plain[:, 0] - plain[:, 3]), torch.full((4,), -math.log(4.0))
    )
    # The row whose positive is the most frequent item loses probability on it
    # (its loss rises); the row whose positive is the rarest gains (its loss falls).
    loss_plain = F.cross_entropy(plain, targets, reduction="none")
    loss_corrected = F.cross_entropy(corrected, targets, reduction="none")
    assert loss_corrected[0] > loss_plain[0] and loss_corrected[3] < loss_plain[3]


def test_accidental_hits_are_masked_but_the_target_is_kept():
    users, items, bias, _ = _toy()
    ids = torch.tensor([7, 8, 7, 7])  # item 7 is the positive of rows 0, 2 and 3
    logits, targets = in_batch_softmax_logits(users[:3], items, bias, ids)
    masked = torch.isneginf(logits)
    assert masked.tolist() == [
        [False, False, True, True],
        [False, False, False, False],
        [True, False, False, True],
    ]
    assert torch.isfinite(logits[torch.arange(3), targets]).all()
    assert torch.isfinite(F.cross_entropy(logits, targets))


def test_item_log_frequency_is_the_log_share_among_positives():
    ids = torch.tensor([1, 1, 1, 2, 3, 3])
    log_q = item_log_frequency(ids, num_items=5)
    torch.testing.assert_close(log_q[1:4].exp(), torch.tensor([0.5, 1 / 6, 2 / 6]))
    assert torch.isfinite(log_q).all()  # never-seen items get a finite placeholder


def test_in_batch_softmax_learns_the_planted_signal(tmp_path, make_frame):
    frame = make_frame(rows=4000)
    held_out = frame.sample(frac=0.2, random_state=0)
    train_frame = frame.drop(held_out.index)
    train_frame.to_parquet(tmp_path / "train.parquet", index=False)
    spec = FeatureSpec.infer(frame)

    metrics = train(tmp_path / "train.parquet", spec, tmp_path / "model", SOFTMAX)
    positives = int(train_frame["label"].sum())
    assert metrics["objective"] == "in_batch_softmax"
    assert metrics["rows"] == len(train_frame) and metrics["training_rows"] == positives
    assert metrics["steps"] == SOFTMAX.epochs * (positives // SOFTMAX.batch_size)
    losses = metrics["epoch_losses"]
    assert losses[-1] < losses[0] - 0.3 and losses[-1] < math.log(SOFTMAX.batch_size)

    model = TrainedModel.load(tmp_path / "model")
    users = frame.drop_duplicates("user_id")
    items = frame.drop_duplicates("item_id")
    scores = model.score(users, items)
    segment = users["user_segment"].map({s: i for i, s in enumerate(["north", "south", "east", "west"])})
    category = items["item_category"].map({c: i for i, c in enumerate(["news", "sports", "music", "games"])})
    preferred = segment.to_numpy()[:, None] == category.to_numpy()[None, :]
    known = segment.notna().to_numpy()
    own = np.where(preferred, scores, np.nan)[known]
    other = np.where(~preferred, scores, np.nan)[known]
    assert (np.nanmean(own, axis=1) > np.nanmean(other, axis=1)).mean() > 0.9

    # Held-out clicks outscore held-out non-clicks. A softmax fixes scores only
    # up to a constant per user, so each is taken relative to the user's mean
    # score over the catalogue.
    user_vectors = model.user_vectors(held_out)
    item_vectors, item_bias = model.item_vectors(held_out)
    row_scores = (user_vectors * item_vectors).sum(axis=1) + item_bias
    row_scores -= model.score(held_out, items).mean(axis=1)
    labels = held_out["label"].to_numpy()
    wins = (row_scores[labels == 1][:, None] > row_scores[labels == 0][None, :]).mean()
    assert wins > 0.7


def _popularity_frame(rows: int = 3000, items: int = 40, seed: int = 0) -> pd.DataFrame:
    """Positives only, users without any signal, items clicked with Zipf-like frequencies."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1)
    picks = rng.choice(items, size=rows, p=weights / weights.sum())
    return pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 50, rows)],
            "item_id": [f"i{i:02d}" for i in picks],
            "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
            "label": 1.0,
        }
    )


def test_logq_correction_recovers_item_popularity(tmp_path):
    """With users that carry no signal, the full softmax's optimum ranks items by
    frequency. In-batch negatives are drawn in proportion to frequency, so
    without the correction a popular item is pushed down about as often as it
    is pulled up and much of the popularity order is lost; with it, it is
    recovered."""
    frame = _popularity_frame()
    frame.to_parquet(tmp_path / "popular.parquet", index=False)
    catalogue = frame.drop_duplicates("item_id").sort_values("item_id")
    frequency = frame["item_id"].value_counts().reindex(catalogue["item_id"]).to_numpy()
    correlation = {}
    for logq in (True, False):
        config = SOFTMAX.model_copy(update={"temperature": 1.0, "epochs": 6, "logq_correction": logq})
        train(tmp_path / "popular.parquet", FeatureSpec(), tmp_path / f"model-{logq}", config)
        model = TrainedModel.load(tmp_path / f"model-{logq}")
        scores = model.score(frame.drop_duplicates("user_id"), catalogue).mean(axis=0)
        correlation[logq] = pd.Series(scores).rank().corr(pd.Series(frequency).rank())  # Spearman
    print(f"\nSpearman correlation of mean score with frequency: {correlation}")
    assert correlation[True] > 0.9
    assert correlation[False] < correlation[True] - 0.25


def test_a_checkpoint_of_another_objective_is_refused(tmp_path, training_set):
    spec = FeatureSpec.infer(pd.read_parquet(training_set))
    bce = SOFTMAX.model_copy(update={"objective": "bce", "epochs": 1})
    train(training_set, spec, tmp_path / "a", bce, tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"another run .*objective"):
        train(training_set, spec, tmp_path / "b", SOFTMAX.model_copy(update={"epochs": 2}), tmp_path / "ckpt")


def test_too_few_positives_for_one_batch_is_an_error(tmp_path, training_set):
    spec = FeatureSpec.infer(pd.read_parquet(training_set))
    with pytest.raises(ValueError, match="positive rows, fewer than one global batch"):
        train(training_set, spec, tmp_path / "model", SOFTMAX.model_copy(update={"batch_size": 1024}))
