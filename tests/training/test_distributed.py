"""Real torchrun runs through `run_torchrun`: data-parallel equivalence and elastic restart."""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recflow.training.config import TrainConfig
from recflow.training.features import FeatureSpec
from recflow.training.inference import TrainedModel
from recflow.training.launch import TrainingFailed, _worker_env, run_torchrun
from recflow.training.train import FAIL_AT_STEP_ENV, FAILURE_MARKER

pytestmark = pytest.mark.slow

# 2000 rows / 64 = 31 steps per epoch, 62 in all.
CONFIG = TrainConfig(
    epochs=2,
    batch_size=64,
    learning_rate=0.01,
    embedding_dim=8,
    hidden_dim=16,
    max_history=5,
    device="cpu",
    log_every_steps=10,
    checkpoint_every_steps=10,
)


def _weights(directory) -> dict[str, torch.Tensor]:
    return torch.load(directory / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, make_frame):
    """A training set, its spec, and the same run with 1 and with 2 torchrun workers."""
    root = tmp_path_factory.mktemp("reference")
    frame = make_frame()
    frame.to_parquet(root / "training_set.parquet", index=False)
    spec = FeatureSpec.infer(frame)
    metrics = {
        n: run_torchrun(root / "training_set.parquet", spec, root / f"workers_{n}", CONFIG, nproc_per_node=n)
        for n in (1, 2)
    }
    return root, spec, metrics


def test_two_workers_train_the_same_model_as_one(reference):
    root, _, metrics = reference
    assert metrics[1]["world_size"] == 1 and metrics[2]["world_size"] == 2
    assert metrics[1]["steps"] == metrics[2]["steps"] == 62
    one, two = _weights(root / "workers_1"), _weights(root / "workers_2")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-4, msg=name)
    assert metrics[2]["epoch_losses"] == pytest.approx(metrics[1]["epoch_losses"], abs=1e-5)


def test_a_killed_worker_is_restarted_and_resumes_from_the_checkpoint(reference, tmp_path, monkeypatch, caplog):
    root, spec, _ = reference
    # The last worker exits hard before step 45, once; the last checkpoint is at step 40.
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "45")
    with caplog.at_level(logging.INFO, logger="recflow.training.launch"):
        metrics = run_torchrun(
            root / "training_set.parquet",
            spec,
            tmp_path / "model",
            CONFIG,
            nproc_per_node=2,
            checkpoint_dir=tmp_path / "checkpoints",
            max_restarts=1,
        )
    assert (tmp_path / "checkpoints" / FAILURE_MARKER).is_file()
    assert "exiting hard before step 45" in caplog.text
    assert "resuming from step 40" in caplog.text
    assert metrics["resumed_from_step"] == 40 and metrics["steps"] == 62
    # The resumed run continues the uninterrupted one exactly.
    uninterrupted, resumed = _weights(root / "workers_2"), _weights(tmp_path / "model")
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=1e-6, msg=name)


def test_a_failed_run_raises_with_the_log_tail(tmp_path):
    with pytest.raises(TrainingFailed) as failure:
        run_torchrun(tmp_path / "missing.parquet", FeatureSpec(), tmp_path / "model", CONFIG, nproc_per_node=1)
    assert failure.value.returncode != 0
    assert "missing.parquet" in str(failure.value)
    assert 0 < len(failure.value.tail) <= 40


# --- the in-batch softmax: item vectors are all-gathered across the workers ---------------------

SOFTMAX_CONFIG = CONFIG.model_copy(update={"objective": "in_batch_softmax", "temperature": 0.5, "batch_size": 32})
STEP_WORKER = Path(__file__).with_name("softmax_step_worker.py")


def _run_step_worker(training_set: Path, out: Path, nproc: int) -> dict:
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc-per-node", str(nproc)]  # fmt: skip
    subprocess.run([*launcher, str(STEP_WORKER), str(training_set), str(out)], check=True, env=_worker_env(), timeout=300)
    return torch.load(out, weights_only=True)


def test_one_softmax_step_has_the_same_loss_and_gradients_on_two_workers(reference, tmp_path):
    """The exact statement of equivalence: the global-batch softmax, split over two
    workers with the item side all-gathered, has the single-process loss and gradients."""
    root, _, _ = reference
    one = _run_step_worker(root / "training_set.parquet", tmp_path / "one.pt", 1)
    two = _run_step_worker(root / "training_set.parquet", tmp_path / "two.pt", 2)
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-6, atol=1e-6)
    assert one["grads"].keys() == two["grads"].keys()
    # Every parameter of both towers gets its gradient, the item side's included.
    assert {"user_embedding.weight", "item_embedding.weight", "item_mix.mlp.0.weight", "item_id_bias.weight"} <= set(one["grads"])
    for name, gradient in one["grads"].items():
        assert gradient.abs().max() > 0, name
        torch.testing.assert_close(two["grads"][name], gradient, rtol=1e-5, atol=1e-8, msg=name)


@pytest.fixture(scope="module")
def softmax_runs(reference):
    root, spec, _ = reference
    metrics = {
        n: run_torchrun(root / "training_set.parquet", spec, root / f"softmax_{n}", SOFTMAX_CONFIG, nproc_per_node=n)
        for n in (1, 2)
    }
    return root, metrics


def test_two_workers_train_the_same_softmax_model_as_one(softmax_runs):
    """End to end, within float tolerance. The weights are not compared at 1e-4 as for bce:
    the softmax is unchanged by a vector added to every item, so along that direction the
    gradient is float rounding only, which Adam's normalisation turns into steps of
    learning-rate size that differ with the summation order. What the model ranks must agree."""
    root, metrics = softmax_runs
    assert metrics[1]["steps"] == metrics[2]["steps"] > 0
    assert metrics[1]["training_rows"] == metrics[2]["training_rows"] < metrics[1]["rows"]
    assert metrics[2]["epoch_losses"] == pytest.approx(metrics[1]["epoch_losses"], rel=1e-3)
    frame = pd.read_parquet(root / "training_set.parquet")
    users, items = frame.drop_duplicates("user_id"), frame.drop_duplicates("item_id")
    scores = [TrainedModel.load(root / f"softmax_{n}").score(users, items) for n in (1, 2)]
    # Scores are defined up to a constant per user.
    one, two = (s - s.mean(axis=1, keepdims=True) for s in scores)
    assert np.abs(two - one).max() < 0.05 * np.abs(one).max()
    top_one, top_two = (np.argsort(-s, axis=1)[:, :10] for s in (one, two))
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_one, top_two)])
    assert overlap > 0.95
